#!/usr/bin/env python3
"""A stand-in kubelet for the agent's Kubernetes-enrichment test: serves GET /pods (a v1 PodList from a
file) over HTTPS, and only to a request bearing the expected token, like the kubelet's authenticated
port. Prints "listening PORT" once bound; serves until killed.

Usage: kubelet.py CERT KEY TOKEN PODLIST_JSON
"""
import http.server
import ssl
import sys

cert, key, token, podlist = sys.argv[1:5]
body = open(podlist, "rb").read()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != f"Bearer {token}":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/pods":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
