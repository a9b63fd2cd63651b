"""Third-party verification of a gpuattest export with securesystemslib's DSSE implementation.

Usage: python3 verify_dsse.py EXPORT.json KEY.pem
Exit 0 when securesystemslib verifies the envelope with the key and the payload is an in-toto
Statement v1; 1 when it does not; 2 when securesystemslib is not installed.
"""
import base64
import json
import sys

try:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey
except ImportError as e:  # pragma: no cover
    print(f"securesystemslib is not installed: {e}", file=sys.stderr)
    sys.exit(2)

export_path, key_path = sys.argv[1], sys.argv[2]
public = load_pem_public_key(open(key_path, "rb").read())
envelope = Envelope.from_dict(json.load(open(export_path)))
# The DSSE signature carries our key id (SHA-256 of the SPKI DER); bind the key to it.
keyid = envelope.signatures and next(iter(envelope.signatures.values())).keyid
key = SSlibKey.from_crypto(public, keyid=keyid, scheme="ed25519")
try:
    verified = envelope.verify([key], 1)
except Exception as e:  # securesystemslib raises VerificationError
    print(f"securesystemslib refused the envelope: {e}", file=sys.stderr)
    sys.exit(1)
statement = json.loads(base64.b64decode(json.load(open(export_path))["payload"]))
if envelope.payload_type != "application/vnd.in-toto+json" or statement.get("_type") != "https://in-toto.io/Statement/v1":
    print("not an in-toto Statement v1", file=sys.stderr)
    sys.exit(1)
print(f"securesystemslib {__import__('securesystemslib').__version__}: envelope verified by {list(verified)}; "
      f"{len(statement['subject'])} subjects, predicate {statement['predicateType']}")
