"""`/docs`: Swagger UI served from the installed `swagger_ui_bundle` package, so the page works where
the service runs, air-gapped clusters included (no CDN, no request beyond the API itself).

The bundled Swagger UI (4.x) reads OpenAPI 3.0 documents only, while FastAPI writes 3.1, so the page
loads `/docs/openapi.json`: the same document (`app.openapi()`) rewritten to the 3.0 forms of the
few 3.1 constructs it uses (`anyOf` with `null` -> `nullable`, `examples` lists in schemas ->
`example`, `const` -> a one-value `enum`, numeric `exclusiveMinimum`/`exclusiveMaximum` -> the
boolean forms). `/openapi.json` stays the 3.1 original for code generators. ReDoc is off.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

__all__ = ["DOCS_ASSETS", "install_docs", "openapi_30", "operation_id"]

DOCS_ASSETS = "/docs/assets"
DOCS_OPENAPI = "/docs/openapi.json"


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operation id: its endpoint function's name (`submit_job`, `create_speech`),
    readable in generated clients; `tests/integration/test_docs_offline.py` checks they are unique."""
    return route.name


def install_docs(app: FastAPI) -> None:
    """Add `/docs` (Swagger UI from the package's files) and its 3.0 view of the OpenAPI document."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    title = f"{app.title} - docs"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=DOCS_OPENAPI,
            title=title,
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get(DOCS_OPENAPI, include_in_schema=False)
    def openapi_for_docs() -> JSONResponse:
        return JSONResponse(openapi_30(app.openapi()))


def openapi_30(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAPI 3.1 document in the 3.0 forms Swagger UI 4 renders."""
    out = _downgrade(document)
    out["openapi"] = "3.0.3"
    return dict(out)


def _downgrade(node: Any) -> Any:
    if isinstance(node, list):
        return [_downgrade(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _downgrade(value) for key, value in node.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            if len(rest) == 1 and isinstance(rest[0], dict) and "$ref" not in rest[0]:
                del out[key]
                out = {**rest[0], **out}
            else:  # several options, or a $ref (which cannot carry siblings in 3.0): keep the list
                out[key] = rest
            out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list) and _is_schema(out):
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[inclusive] = value
            out[bound] = True
    if out.get("type") == "null":
        del out["type"]
        out["nullable"] = True
    return out


def _is_schema(node: dict[str, Any]) -> bool:
    """A JSON-schema object (its `examples` is a list), not an OpenAPI media type or parameter
    (whose `examples` is a map of named examples)."""
    return any(key in node for key in ("type", "properties", "$ref", "anyOf", "oneOf", "allOf", "items", "enum"))
