"""The paint API's `/docs` page: the OpenAPI schema rendered as one self-contained HTML page.

FastAPI's own docs pages fetch Swagger UI and ReDoc from a CDN and stay blank offline, so the
server turns them off and renders its schema here instead: every operation with its parameters,
bodies and responses (`$ref`s resolved), and a "try it" form for GET routes. The page's CSS and
JS live in `experiments/paint_static/docs.{css,js}` and are inlined, so it loads nothing else.
"""

from __future__ import annotations

import html
import json
import os
import re
from typing import Any, NamedTuple

import fastapi
from fastapi import responses

from experiments.paint import STATIC_DIR


class DocsAssets(NamedTuple):
  """The docs page's stylesheet and script, as text."""

  css: str
  js: str


def load_assets(folder: str = STATIC_DIR) -> DocsAssets:
  """The page's CSS and JS, read from `docs.css` and `docs.js` in `folder`."""
  texts = []
  for name in ("docs.css", "docs.js"):
    with open(os.path.join(folder, name), encoding="utf-8") as f:
      texts.append(f.read())
  return DocsAssets(*texts)


def render_docs(openapi: dict, assets: DocsAssets | None = None) -> str:
  """The API docs page of an OpenAPI schema: one HTML file that loads nothing from elsewhere.

  Every operation shows its summary, description, parameters, request body and responses, with
  `$ref`s resolved into `components.schemas`; GET operations get a small "try it" form. The CSS
  and JS (`assets`, default: `load_assets()`) are inlined.
  """
  assets = assets or load_assets()
  schemas = openapi.get("components", {}).get("schemas", {})
  info = openapi.get("info", {})
  title = html.escape(info.get("title", "API"))
  ops = [(path, method, op) for path, item in openapi.get("paths", {}).items()
         for method, op in item.items() if isinstance(op, dict) and "responses" in op]
  toc = "".join(f'<li><a href="#{_anchor(m, p)}">{_method(m)} <code>{html.escape(p)}</code></a> '
                f'{html.escape(op.get("summary", ""))}</li>' for p, m, op in ops)
  body = "".join(_operation_html(p, m, op, schemas) for p, m, op in ops)
  return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<meta name="viewport" content="width=device-width, initial-scale=1">'
          f'<title>{title} API</title><link rel="icon" href="data:,">'
          f'<style>{assets.css}</style></head>\n<body><header><h1>{title} API '
          f'<small>{html.escape(str(info.get("version", "")))}</small></h1>'
          f'{_prose(info.get("description", ""))}<p><a href="/">The paint page</a> · '
          f'<a href="/openapi.json">openapi.json</a></p></header>\n'
          f'<nav><ul>{toc}</ul></nav>\n<main>{body}</main>\n'
          f'<script>{assets.js}</script></body></html>\n')


def _operation_html(path: str, method: str, op: dict, schemas: dict) -> str:
  """One operation's section."""
  parts = [f'<section id="{_anchor(method, path)}"><h2>{_method(method)} '
           f'<code>{html.escape(path)}</code> {html.escape(op.get("summary", ""))}</h2>',
           _prose(op.get("description", ""))]
  params = op.get("parameters", [])
  if params:
    rows = "".join(_field_html(p["name"], p.get("schema", {}), p.get("required", False),
                               schemas, (), where=p.get("in", ""),
                               description=p.get("description")) for p in params)
    parts.append(f"<h3>Parameters</h3><ul>{rows}</ul>")
  body = op.get("requestBody", {}).get("content", {}).get("application/json")
  if body is not None:
    parts.append("<h3>JSON body</h3>" + _payload_html(body.get("schema", {}), schemas))
  parts.append("<h3>Responses</h3><ul>")
  for status, response in op.get("responses", {}).items():
    content = response.get("content", {}).get("application/json")
    payload = _payload_html(content.get("schema", {}), schemas) if content else ""
    parts.append(f"<li><code>{html.escape(status)}</code> "
                 f"{html.escape(response.get('description', ''))}{payload}</li>")
  parts.append("</ul>")
  if method == "get":
    parts.append(_try_html(path, params))
  return "".join(parts) + "</section>\n"


def _payload_html(node: dict, schemas: dict) -> str:
  """A body's type, its description and its fields."""
  name, resolved = _resolve(node, schemas)
  nested = _nested(node, schemas)
  out = f' <span class="type">{html.escape(_type_label(node))}</span>'
  if name and resolved.get("description"):
    out += " — " + _inline(resolved["description"])
  if nested is not None:
    out += _fields_html(nested[1], schemas, (nested[0],))
  return out


def _fields_html(obj: dict, schemas: dict, seen: tuple[str, ...]) -> str:
  """The fields of an object schema as a nested list (models already open are not reopened)."""
  required = set(obj.get("required", []))
  rows = "".join(_field_html(name, node, name in required, schemas, seen)
                 for name, node in obj.get("properties", {}).items())
  if obj.get("additionalProperties") is False:
    rows += '<li class="facts">Other fields are refused.</li>'
  return f"<ul>{rows}</ul>"


def _field_html(name: str, node: dict, required: bool, schemas: dict, seen: tuple[str, ...],
                where: str = "", description: str | None = None) -> str:
  """One field or parameter: name, type, required, facts, description and nested fields."""
  nested = _nested(node, schemas)
  if description is None:
    description = node.get("description") or (nested[1].get("description", "") if nested else "")
  facts = _facts(node, schemas)
  if "default" in node:
    facts.insert(0, f"default {_json(node['default'])}")
  out = f"<li><code><b>{html.escape(name)}</b></code>"
  if where:
    out += f" ({html.escape(where)})"
  out += f' <span class="type">{html.escape(_type_label(node))}</span>'
  if required:
    out += ' <span class="req">required</span>'
  if facts:
    out += f' <span class="facts">{"; ".join(facts)}</span>'
  if description:
    out += " — " + _inline(description)
  if nested is not None and nested[0] not in seen:
    out += _fields_html(nested[1], schemas, seen + (nested[0],))
  return out + "</li>"


def _try_html(path: str, params: list[dict]) -> str:
  """A form that GETs `path` with its query and path parameters and shows the answer."""
  inputs = "".join(
      f'<label><code>{html.escape(p["name"])}</code> <input name="{html.escape(p["name"])}" '
      f'data-in="{html.escape(p.get("in", "query"))}"{" required" if p.get("required") else ""}'
      f'></label>' for p in params if p.get("in") in ("query", "path"))
  return (f'<h3>Try it</h3><form class="try" method="get" action="{html.escape(path)}">'
          f'{inputs}<button type="submit">GET</button><pre class="out"></pre></form>')


def _resolve(node: dict, schemas: dict) -> tuple[str | None, dict]:
  """(model name, schema) of a `$ref` into `components.schemas`; (None, node) otherwise."""
  ref = node.get("$ref")
  if ref is None:
    return None, node
  name = ref.rsplit("/", 1)[-1]
  return name, schemas.get(name, {})


def _children(node: dict) -> list[dict]:
  """The schemas inside `node`: union members, array items, dictionary values."""
  kids = [*node.get("anyOf", []), *node.get("oneOf", []), *node.get("allOf", [])]
  kids += [node[k] for k in ("items", "additionalProperties") if isinstance(node.get(k), dict)]
  return kids


def _nested(node: dict, schemas: dict) -> tuple[str, dict] | None:
  """(name, schema) of the first object schema with fields in `node` (itself, its items, ...)."""
  name, resolved = _resolve(node, schemas)
  if "properties" in resolved:
    return name or resolved.get("title", ""), resolved
  if name is not None:
    return None  # a named model without fields (an alias): not opened, so no cycle
  for child in _children(node):
    found = _nested(child, schemas)
    if found is not None:
      return found
  return None


def _type_label(node: dict) -> str:
  """A short type: 'integer', 'array of Intervention', 'number | array of number', ..."""
  if "$ref" in node:
    return node["$ref"].rsplit("/", 1)[-1]
  union = node.get("anyOf") or node.get("oneOf") or node.get("allOf")
  if union:
    return " | ".join(_type_label(member) for member in union)
  kind = node.get("type", "any")
  if kind == "array":
    return f"array of {_type_label(node.get('items', {}))}"
  if kind == "object" and isinstance(node.get("additionalProperties"), dict):
    return f"object of string → {_type_label(node['additionalProperties'])}"
  return kind


_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
           ("exclusiveMaximum", "<"), ("minItems", "items ≥"), ("maxItems", "items ≤"),
           ("minLength", "length ≥"), ("maxLength", "length ≤"), ("pattern", "matches"))


def _facts(node: dict, schemas: dict, prefix: str = "") -> list[str]:
  """Enums and bounds of `node` and of the schemas inside it ('each' for items)."""
  _, resolved = _resolve(node, schemas)
  if "properties" in resolved:
    return []
  facts = []
  if "enum" in resolved:
    facts.append(prefix + "one of " + ", ".join(_json(v) for v in resolved["enum"]))
  if "const" in resolved:
    facts.append(prefix + "always " + _json(resolved["const"]))
  facts += [f"{html.escape(prefix + symbol)} {_json(resolved[key])}" for key, symbol in _BOUNDS
            if key in resolved]
  for child in _children(resolved):
    each = "each " if child is resolved.get("items") else ""
    facts += _facts(child, schemas, prefix + each)
  return facts


def _json(value: Any) -> str:
  """A value as escaped inline code (4294967296.0 -> 4294967296)."""
  if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
    value = int(value)
  return f"<code>{html.escape(json.dumps(value))}</code>"


def _inline(text: str) -> str:
  """Escaped text with `backticks` as code."""
  return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _prose(text: str) -> str:
  """Paragraphs of escaped text (blank lines separate them)."""
  return "".join(f"<p>{_inline(p)}</p>" for p in re.split(r"\n\s*\n", text.strip()) if p)


def _method(method: str) -> str:
  return f'<span class="method {html.escape(method)}">{html.escape(method.upper())}</span>'


def _anchor(method: str, path: str) -> str:
  return "op-" + method + re.sub(r"[^A-Za-z0-9]+", "-", path).rstrip("-")


def docs_route(api: fastapi.FastAPI) -> None:
  """`/docs`: the API docs rendered here from `api.openapi()` (FastAPI's load from a CDN).

  The CSS and JS are read now, at startup, so a missing file fails the start, not a request.
  """
  assets = load_assets()

  @api.get("/docs", include_in_schema=False, response_class=responses.HTMLResponse)
  def docs() -> responses.HTMLResponse:
    return responses.HTMLResponse(render_docs(api.openapi(), assets),
                                  headers={"Cache-Control": "no-cache"})
