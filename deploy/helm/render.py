#!/usr/bin/env python3
"""Render the gpuattest Helm chart without helm, and check every manifest against the Kubernetes schemas.

`helm` is not in the package registries CI can reach, so this renders the subset of Go templates the
chart uses and refuses anything else (an unknown function or construct is an error, never silently
empty output). With helm installed, `helm template` gives the same manifests; deploy/check.sh compares
the two when both are present.

Supported: {{ PIPELINE }}, {{- / -}} trimming, {{/* comments */}}, if / else / end, define / include,
field paths (.Values.a.b, .Release.Name, .Chart.AppVersion), parentheses, and the functions quote,
default, toYaml, nindent, indent, include, not, and, or, eq, ne, int, fail, required.

Usage: render.py CHART [-f VALUES]... [--release NAME] [--namespace NS] [-o FILE] [--validate VERSION]
"""

import argparse
import copy
import re
import sys
from pathlib import Path

import yaml


class TemplateError(Exception):
    pass


# ---- lexing and parsing ------------------------------------------------------------------------

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def lex(src, name):
    """Splits a template into ('text', s) and ('action', s) items, applying trim markers."""
    items, pos = [], 0
    for m in ACTION.finditer(src):
        text = src[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        items.append(["text", text])
        body = m.group(2).strip()
        items.append(["action", body, name, src.count("\n", 0, m.start()) + 1])
        pos = m.end()
        if m.group(3):
            rest = src[pos:]
            pos += len(rest) - len(rest.lstrip(" \t\r\n"))
    items.append(["text", src[pos:]])
    return items


def parse(items, defines):
    """Builds a tree: lists of ('text', s), ('expr', pipeline, where), ('if', cond, then, else, where)."""
    root, stack = [], []
    cur = root
    for it in items:
        if it[0] == "text":
            if it[1]:
                cur.append(("text", it[1]))
            continue
        body, where = it[1], f"{it[2]}:{it[3]}"
        if body.startswith("/*"):
            continue
        word = body.split(None, 1)[0] if body else ""
        if word == "if":
            node = ["if", body[2:].strip(), [], [], where]
            cur.append(node)
            stack.append((cur, node, "then"))
            cur = node[2]
        elif word == "else":
            if not stack or stack[-1][1][0] != "if" or stack[-1][2] != "then" or body != "else":
                raise TemplateError(f"{where}: unsupported or misplaced `{body}`")
            parent, node, _ = stack.pop()
            stack.append((parent, node, "else"))
            cur = node[3]
        elif word == "define":
            name = parse_string(body[6:].strip(), where)
            node = ["define", name, [], where]
            stack.append((cur, node, "define"))
            cur = node[2]
        elif word == "end":
            if not stack:
                raise TemplateError(f"{where}: `end` without an opening action")
            parent, node, _ = stack.pop()
            if node[0] == "define":
                defines[node[1]] = node[2]
            cur = parent
        elif word in ("range", "with", "block", "template", "break", "continue") or body.startswith("$"):
            raise TemplateError(f"{where}: `{word}` is outside the subset this renderer supports")
        else:
            cur.append(("expr", body, where))
    if stack:
        raise TemplateError(f"{stack[-1][1][-1]}: action is never closed with `end`")
    return root


def parse_string(s, where):
    m = re.fullmatch(r'"((?:[^"\\]|\\.)*)"', s)
    if not m:
        raise TemplateError(f"{where}: expected a quoted name, got `{s}`")
    return bytes(m.group(1), "utf-8").decode("unicode_escape")


TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+)|(?P<field>\.[A-Za-z0-9_.]*)'
                   r'|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[()|]))')


def tokenize(s, where):
    out, pos = [], 0
    s = s.rstrip()
    while pos < len(s):
        m = TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"{where}: cannot read `{s[pos:]}`")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


# ---- evaluation --------------------------------------------------------------------------------

MISSING = object()


def truthy(v):
    return not (v is None or v is MISSING or v is False or v == 0 or v == "" or v == [] or v == {})


def lookup(ctx, path, where):
    v = ctx
    for part in [p for p in path.split(".") if p]:
        if isinstance(v, dict) and part in v:
            v = v[part]
        elif isinstance(v, dict) or v is MISSING or v is None:
            return MISSING
        else:
            raise TemplateError(f"{where}: `{path}`: cannot take `{part}` of a {type(v).__name__}")
    return v


def to_text(v, where):
    if v is MISSING or v is None:
        raise TemplateError(f"{where}: the value is missing; set it in values.yaml")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        raise TemplateError(f"{where}: a map or list must go through toYaml")
    return str(v)


def indent(n, s):
    pad = " " * n
    return "\n".join(pad + line if line else line for line in s.split("\n"))


class Renderer:
    def __init__(self, defines, ctx):
        self.defines, self.ctx = defines, ctx

    def render(self, nodes):
        out = []
        for n in nodes:
            if n[0] == "text":
                out.append(n[1])
            elif n[0] == "expr":
                v = self.pipeline(n[1], n[2])
                if v is not None:  # fail/define produce nothing
                    out.append(to_text(v, n[2]))
            elif n[0] == "if":
                out.append(self.render(n[2] if truthy(self.pipeline(n[1], n[4])) else n[3]))
        return "".join(out)

    def pipeline(self, s, where):
        toks = tokenize(s, where)
        value, i = self.command(toks, 0, where, None)
        while i < len(toks) and toks[i] == ("punct", "|"):
            value, i = self.command(toks, i + 1, where, value)
        if i != len(toks):
            raise TemplateError(f"{where}: unexpected `{toks[i][1]}`")
        return value

    def operand(self, toks, i, where):
        kind, text = toks[i]
        if kind == "str":
            return parse_string(text, where), i + 1
        if kind == "num":
            return int(text), i + 1
        if kind == "field":
            return lookup(self.ctx, text, where), i + 1
        if kind == "ident" and text in ("true", "false"):
            return text == "true", i + 1
        if (kind, text) == ("punct", "("):
            toks_inner, depth, j = [], 1, i + 1
            while j < len(toks):
                if toks[j] == ("punct", "("):
                    depth += 1
                elif toks[j] == ("punct", ")"):
                    depth -= 1
                    if depth == 0:
                        break
                toks_inner.append(toks[j])
                j += 1
            v, k = self.command(toks_inner, 0, where, None)
            while k < len(toks_inner) and toks_inner[k] == ("punct", "|"):
                v, k = self.command(toks_inner, k + 1, where, v)
            return v, j + 1
        raise TemplateError(f"{where}: unexpected `{text}`")

    def command(self, toks, i, where, piped):
        if i >= len(toks):
            raise TemplateError(f"{where}: empty command")
        kind, text = toks[i]
        if kind == "ident" and text not in ("true", "false"):
            args, j = [], i + 1
            while j < len(toks) and toks[j] != ("punct", "|"):
                a, j = self.operand(toks, j, where)
                args.append(a)
            if piped is not None:
                args.append(piped)
            return self.call(text, args, where), j
        if piped is not None:
            raise TemplateError(f"{where}: cannot pipe into a value")
        return self.operand(toks, i, where)

    def call(self, fn, a, where):
        def need(n):
            if len(a) != n:
                raise TemplateError(f"{where}: {fn} takes {n} arguments, got {len(a)}")
        if fn == "quote":
            need(1)
            return '"' + to_text(a[0], where).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if fn == "default":
            need(2)
            return a[1] if truthy(a[1]) else a[0]
        if fn == "toYaml":
            need(1)
            return yaml.safe_dump(a[0], default_flow_style=False, sort_keys=True).rstrip("\n")
        if fn in ("nindent", "indent"):
            need(2)
            s = indent(a[0], to_text(a[1], where))
            return "\n" + s if fn == "nindent" else s
        if fn == "include":
            need(2)
            if a[0] not in self.defines:
                raise TemplateError(f"{where}: no template named {a[0]!r}")
            return self.render(self.defines[a[0]])
        if fn == "not":
            need(1)
            return not truthy(a[0])
        if fn == "and":
            return all(truthy(x) for x in a)
        if fn == "or":
            return any(truthy(x) for x in a)
        if fn in ("eq", "ne"):
            need(2)
            return (a[0] == a[1]) == (fn == "eq")
        if fn == "int":
            need(1)
            return int(a[0])
        if fn == "fail":
            need(1)
            raise TemplateError(f"{where}: {a[0]}")
        if fn == "required":
            need(2)
            if not truthy(a[1]):
                raise TemplateError(f"{where}: {a[0]}")
            return a[1]
        raise TemplateError(f"{where}: function `{fn}` is outside the subset this renderer supports")


# ---- the chart ---------------------------------------------------------------------------------


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def render_chart(chart, value_files, release, namespace):
    chart = Path(chart)
    meta = load_yaml(chart / "Chart.yaml")
    values = load_yaml(chart / "values.yaml")
    for f in value_files:
        merge(values, load_yaml(f))
    ctx = {
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta.get("appVersion", "")},
    }
    defines, trees = {}, []
    for t in sorted((chart / "templates").iterdir()):
        tree = parse(lex(t.read_text(encoding="utf-8"), f"templates/{t.name}"), defines)
        if not t.name.startswith("_") and t.suffix in (".yaml", ".yml"):
            trees.append((t.name, tree))
    r = Renderer(defines, ctx)
    out = []
    for name, tree in trees:
        text = r.render(tree).strip("\n")
        if text.strip():
            out.append(f"---\n# Source: {meta['name']}/templates/{name}\n{text}\n")
    return "".join(out)


def validate(manifests, version):
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all(manifests) if d]
    kinds = []
    for d in docs:
        where = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise TemplateError(f"{where} is not a valid Kubernetes {version} object: {path}: {e.message}")
        kinds.append(where)
    return kinds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chart")
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--release", default="gpuattest")
    ap.add_argument("--namespace", default="gpuattest")
    ap.add_argument("-o", "--out")
    ap.add_argument("--validate", metavar="K8S_VERSION", help="check every manifest against this version's schemas")
    a = ap.parse_args()
    try:
        manifests = render_chart(a.chart, a.values, a.release, a.namespace)
        if a.validate:
            for k in validate(manifests, a.validate):
                print(f"valid ({a.validate}, strict): {k}", file=sys.stderr)
    except (TemplateError, OSError, yaml.YAMLError, KeyError) as e:
        print(f"render.py: {a.chart}: {e}", file=sys.stderr)
        return 1
    if a.out:
        Path(a.out).write_text(manifests, encoding="utf-8")
    else:
        sys.stdout.write(manifests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
