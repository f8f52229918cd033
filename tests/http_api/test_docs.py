"""/docs serves Swagger UI from the installed package (no CDN) pointed at /openapi.json."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from http_api.app import create_app
from tests.http_api.fakes import fake_registry


def client(**kwargs: object) -> TestClient:
    return TestClient(create_app(fake_registry()), **kwargs)  # type: ignore[arg-type]


def test_index_loads_local_assets_and_the_spec() -> None:
    r = client().get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert "/docs/static/swagger-ui-bundle.js" in assets
    assert all(a.startswith("/docs/static/") for a in assets)
    assert "://" not in r.text  # nothing from another host: it works offline
    assert 'url: "/openapi.json"' in r.text and "validatorUrl: null" in r.text


def test_static_files_come_from_the_package() -> None:
    c = client()
    js = c.get("/docs/static/swagger-ui-bundle.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert b"SwaggerUIBundle" in js.content
    assert c.get("/docs/static/swagger-ui.css").status_code == 200
    assert c.get("/docs/static/nope.js").status_code == 404


def test_spec_at_both_paths() -> None:
    c = client()
    spec = c.get("/openapi.json")
    assert spec.status_code == 200 and spec.json()["openapi"] == "3.1.0"
    assert c.get("/api-doc/openapi.json").json() == spec.json()


def test_behind_a_path_prefix_the_page_uses_it() -> None:
    r = client(root_path="/llm").get("/docs")
    assert "/llm/docs/static/swagger-ui-bundle.js" in r.text
    assert 'url: "/llm/openapi.json"' in r.text
