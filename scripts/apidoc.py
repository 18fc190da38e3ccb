#!/usr/bin/python3
"""apidoc.py - renders www/openapi.yaml as www/api.html, the readable API page nginx serves.

A static page in the site's own style, with no script and no inline style, so the site's strict
Content-Security-Policy holds for it as for every other page. `scripts/apidoc.py` writes it;
`scripts/apidoc.py --check` exits 1 when the committed page differs from the document (a test
runs that, so the page never drifts from the spec).
"""

import html
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "www" / "openapi.yaml"
PAGE = ROOT / "www" / "api.html"
METHODS = ("get", "post", "put", "patch", "delete")


def esc(s):
    return html.escape(str(s), quote=True)


def inline(text):
    """The little Markdown the document uses inline: `code`, **bold**."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def paragraphs(text):
    return "".join("<p>%s</p>\n" % inline(" ".join(p.split())) for p in (text or "").split("\n\n") if p.strip())


def slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


class Doc:
    def __init__(self, spec):
        self.spec = spec

    def deref(self, obj):
        while isinstance(obj, dict) and "$ref" in obj:
            node = self.spec
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part]
            obj = node
        return obj

    def type_of(self, schema):
        """A short description of a schema's type, linking named schemas."""
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            target = self.deref(schema)
            if target.get("type") == "object":
                return '<a href="#schema-%s">%s</a>' % (slug(name), esc(name))
            return self.type_of(target)
        for key in ("oneOf", "anyOf"):
            if key in schema:
                return " or ".join(dict.fromkeys(self.type_of(s) for s in schema[key]))
        t = schema.get("type", "any")
        if isinstance(t, list):
            return " or ".join(esc(x) for x in t)
        if t == "array":
            return "array of " + self.type_of(schema.get("items", {}))
        return esc(t)

    @staticmethod
    def limits(schema):
        out = []
        for key, label in (("enum", "one of"), ("const", "exactly"), ("format", "format"), ("pattern", "pattern"),
                           ("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"),
                           ("maxLength", "length ≤"), ("maxItems", "items ≤"), ("default", "default")):
            if key in schema:
                v = schema[key]
                v = ", ".join(str(x) for x in v) if isinstance(v, list) else v
                out.append("%s <code>%s</code>" % (label, esc(v)))
        return "; ".join(out)

    def fields(self, schema):
        schema = self.deref(schema)
        props = schema.get("properties", {})
        if not props:
            return ""
        required = set(schema.get("required", []))
        rows = []
        for name, sub in props.items():
            target = self.deref(sub)
            rows.append("<tr><td><code>%s</code>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
                esc(name), " <strong>required</strong>" if name in required else "", self.type_of(sub),
                self.limits(target), inline(sub.get("description", target.get("description", "")))))
        return ('<div class="table-wrap"><table><thead><tr><th>field</th><th>type</th><th>limits</th>'
                "<th>meaning</th></tr></thead><tbody>%s</tbody></table></div>\n" % "".join(rows))

    def operation(self, path, method, op, shared_params):
        anchor = op.get("operationId", slug(method + path))
        out = ['<section class="panel" id="%s">' % esc(anchor),
               "<h3><code>%s %s</code></h3>" % (method.upper(), esc(path)),
               "<p><strong>%s</strong></p>" % inline(op.get("summary", ""))]
        out.append(paragraphs(op.get("description", "")))
        security = op.get("security", self.spec.get("security", []))
        who = "a bearer token (the admin token, or the subscription's access token)" \
            if any(s for s in security) else "anyone"
        out.append("<p>Who: %s.</p>" % who)
        params = [self.deref(p) for p in shared_params + op.get("parameters", [])]
        if params:
            rows = "".join("<tr><td><code>%s</code>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
                esc(p["name"]), " <strong>required</strong>" if p.get("required") else "", esc(p["in"]),
                self.type_of(p.get("schema", {})), self.limits(self.deref(p.get("schema", {}))),
                inline(p.get("description", ""))) for p in params)
            out.append('<h4>Parameters</h4><div class="table-wrap"><table><thead><tr><th>name</th><th>in</th>'
                       "<th>type</th><th>limits</th><th>meaning</th></tr></thead><tbody>%s</tbody></table></div>" % rows)
        body = op.get("requestBody")
        if body:
            schema = body["content"]["application/json"]["schema"]
            out.append("<h4>Body</h4><p>%s</p>" % self.type_of(schema))
        rows = []
        for status, resp in op["responses"].items():
            resp = self.deref(resp)
            content = resp.get("content", {})
            kind = ""
            for mime, media in content.items():
                kind = self.type_of(media.get("schema", {})) if mime == "application/json" else esc(mime)
            rows.append("<tr><td><code>%s</code></td><td>%s</td><td>%s</td></tr>" % (
                esc(status), kind, inline(resp.get("description", ""))))
        out.append('<h4>Responses</h4><div class="table-wrap"><table><thead><tr><th>status</th><th>body</th>'
                   "<th>when</th></tr></thead><tbody>%s</tbody></table></div>" % "".join(rows))
        out.append("</section>")
        return "\n".join(out)

    def render(self):
        info = self.spec["info"]
        by_tag = {t["name"]: [] for t in self.spec.get("tags", [])}
        for path, item in self.spec["paths"].items():
            for method in METHODS:
                if method in item:
                    op = item[method]
                    by_tag.setdefault(op.get("tags", ["other"])[0], []).append((path, method, op, item.get("parameters", [])))
        toc, sections = [], []
        for tag in self.spec.get("tags", []):
            ops = by_tag.get(tag["name"], [])
            toc.append("<li>%s<ul>%s</ul></li>" % (esc(tag["name"]), "".join(
                '<li><a href="#%s"><code>%s %s</code></a></li>' % (esc(op.get("operationId")), m.upper(), esc(p))
                for p, m, op, _ in ops)))
            sections.append('<h2 id="tag-%s">%s</h2>\n%s\n%s' % (
                slug(tag["name"]), esc(tag["name"].capitalize()), paragraphs(tag.get("description", "")),
                "\n".join(self.operation(p, m, op, shared) for p, m, op, shared in ops)))
        schemas = []
        for name, schema in self.spec["components"]["schemas"].items():
            if schema.get("type") != "object":
                continue
            schemas.append('<section class="panel" id="schema-%s"><h3>%s</h3>\n%s%s</section>' % (
                slug(name), esc(name), paragraphs(schema.get("description", "")), self.fields(schema)))
        return PAGE_TEMPLATE.format(
            title=esc(info["title"]), version=esc(info["version"]), summary=inline(info.get("summary", "")),
            description=paragraphs(info.get("description", "")), toc="".join(toc),
            sections="\n".join(sections), schemas="\n".join(schemas))


PAGE_TEMPLATE = """<!doctype html>
<!-- Generated from openapi.yaml by scripts/apidoc.py; edit the document, not this page. -->
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} {version}</title>
  <link rel="icon" href="favicon.svg" type="image/svg+xml">
  <link rel="stylesheet" href="app.css">
</head>
<body>
  <header class="site">
    <h1>{title} {version}</h1>
    <nav aria-label="Site"><a href="index.html">Plans</a><a href="admin.html">Operators</a><a href="api.html" aria-current="page">API</a></nav>
  </header>
  <main class="api">
    <p class="lede">{summary} The machine-readable document: <a href="openapi.yaml">openapi.yaml</a> (OpenAPI 3.1).</p>
    <nav aria-label="Routes" class="panel"><h2>Routes</h2><ul>{toc}</ul></nav>
    <section class="panel"><h2>Conventions</h2>
{description}</section>
{sections}
    <h2 id="schemas">Schemas</h2>
{schemas}
  </main>
</body>
</html>
"""


def main():
    page = Doc(yaml.safe_load(SPEC.read_text())).render()
    if sys.argv[1:] == ["--check"]:
        if PAGE.read_text() != page:
            print("www/api.html is not what scripts/apidoc.py makes of www/openapi.yaml; run scripts/apidoc.py")
            return 1
        return 0
    PAGE.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
