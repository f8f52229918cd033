"""GET /docs (Swagger UI) and GET /openapi.json (also /api-doc/openapi.json).

Swagger UI's files come from the ``swagger-ui-bundle-v2`` package and are served from
``/docs/static``: no CDN, so the page works offline. "Try it out" calls this same server (the
document names no ``servers``, so Swagger UI uses the page's origin).
"""

from __future__ import annotations

import json
from string import Template

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

STATIC = "/docs/static"

INDEX = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>infermcp API</title>
<link rel="stylesheet" href="$static/swagger-ui.css">
<link rel="icon" type="image/png" href="$static/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="$static/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: $spec,
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  persistAuthorization: true,
  displayRequestDuration: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
</script>
</body>
</html>
""")


async def docs(request: Request) -> Response:
    root = request.scope.get("root_path", "")
    html = INDEX.substitute(static=root + STATIC, spec=json.dumps(root + "/openapi.json"))
    return HTMLResponse(html)


async def openapi_json(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


def docs_routes() -> list[BaseRoute]:
    """The documentation routes (not themselves in the OpenAPI document)."""
    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/api-doc/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount(STATIC, app=StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui"),
    ]
