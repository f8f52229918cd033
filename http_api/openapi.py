"""The OpenAPI 3.1 document, generated from the route table and the pydantic models that
validate requests (:mod:`http_api.protocol`) and describe answers (:mod:`http_api.schemas`).

Each :class:`ApiRoute` row is both a Starlette route and an operation of the document, so a
route cannot be served undocumented. The JSON schemas come from pydantic
(``models_json_schema`` with a ``#/components/schemas/`` ref template); nothing here repeats a
field.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from http_api.auth import is_open
from http_api.schemas import ErrorResponse

REF_TEMPLATE = "#/components/schemas/{model}"
SSE = "text/event-stream"
ERRORS = {
    400: "Invalid request (bad field, context too long, unsupported parameter, wrong model "
         "kind)",
    401: "Missing or wrong API key",
    404: "Unknown model or object",
    413: "Request body too large",
    429: "Server at capacity; retry after the Retry-After header",
    503: "Model still loading, or the engine is down",
}

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class ApiRoute:
    """One HTTP operation: what Starlette routes and what the OpenAPI document says of it.

    ``request`` validates the JSON body; ``response`` is the 200 JSON body; ``stream``, the
    payload of each SSE ``data:`` event when the request asks for ``stream: true`` (with
    ``stream_done``, an error event in the envelope may come instead, and ``data: [DONE]``
    ends the stream);
    ``media_type``, the 200 body's type when it is not JSON (then ``response`` is unused).
    ``errors`` answer with the error envelope; ``other`` maps further statuses to their own
    body models (/health's 503). The endpoint's docstring is the operation's description.
    """

    method: Literal["GET", "POST", "DELETE"]
    path: str
    endpoint: Endpoint
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    stream: type[BaseModel] | None = None
    stream_done: bool = True
    errors: tuple[int, ...] = (400, 404, 503)
    other: tuple[tuple[int, type[BaseModel]], ...] = ()
    tag: str = "OpenAI"
    media_type: str = "application/json"


def api_routes(routes: Sequence[ApiRoute]) -> list[Route]:
    """The Starlette routes of ``routes``: one per path, dispatching on the method, so a
    method the path does not serve gets a 405 whose ``Allow`` lists every method it does."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for row in routes:
        by_path.setdefault(row.path, {})[row.method] = row.endpoint
    served = []
    for path, endpoints in by_path.items():
        if len(endpoints) == 1:
            ((method, endpoint),) = endpoints.items()
            served.append(Route(path, endpoint, methods=[method]))
        else:
            served.append(Route(path, _dispatch(endpoints), methods=list(endpoints)))
    return served


def _dispatch(endpoints: dict[str, Endpoint]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return await endpoints["GET" if request.method == "HEAD" else request.method](request)

    return endpoint


def openapi_document(routes: Sequence[ApiRoute], *, auth: bool, title: str = "infermcp",
                     version: str = "0.1.0", description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``; with ``auth``, routes outside
    :data:`http_api.auth.OPEN_PATHS` require the bearer API key."""
    refs, defs = _schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    for route in routes:
        op = _operation(route, refs, auth and not is_open(route.path))
        if op["operationId"] in operation_ids:
            raise ValueError(f"two routes share the operationId {op['operationId']!r}")
        operation_ids.add(op["operationId"])
        paths.setdefault(route.path, {})[route.method.lower()] = op
    components: dict[str, Any] = {"schemas": defs}
    if auth:
        components["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "The server's --api-key (or INFERMCP_API_KEY)"}}
    tags = sorted({r.tag for r in routes})
    return {"openapi": "3.1.0",
            "info": {"title": title, "version": version, "description": description},
            "tags": [{"name": t} for t in tags], "paths": paths, "components": components}


Refs = dict[tuple[Any, str], dict[str, Any]]  # (model, mode) -> {"$ref": ...}


def _schemas(routes: Sequence[ApiRoute]) -> tuple[Refs, dict[str, Any]]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for r in routes:
        if r.request is not None:
            wanted.append((r.request, "validation"))
        for model in (r.response, r.stream, *(m for _, m in r.other)):
            if model is not None:
                wanted.append((model, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(unique, ref_template=REF_TEMPLATE)
    return {key: dict(value) for key, value in refs.items()}, dict(top.get("$defs", {}))


def _operation(route: ApiRoute, refs: Refs, secured: bool) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.endpoint.__name__, "summary": route.summary, "tags": [route.tag],
        "description": inspect.getdoc(route.endpoint) or "",
    }
    names = re.findall(r"{(\w+)}", route.path)
    if names:
        op["parameters"] = [{"name": n, "in": "path", "required": True,
                             "schema": {"type": "string"}} for n in names]
    if route.request is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": refs[(route.request, "validation")]}}}
    ok: dict[str, Any] = {}
    if route.media_type != "application/json":
        ok[route.media_type] = {"schema": {"type": "string"}}
    elif route.response is not None:
        ok["application/json"] = {"schema": refs[(route.response, "serialization")]}
    if route.stream is not None:
        ok[SSE] = {"schema": _event_schema(route, refs)}
    responses: dict[str, Any] = {"200": {"description": _ok_text(route), "content": ok}}
    errors = set(route.errors) | ({413} if route.request else set()) | ({401} if secured
                                                                        else set())
    error_body = {"application/json": {"schema": refs[(ErrorResponse, "serialization")]}}
    for status in sorted(errors):
        responses[str(status)] = {"description": ERRORS[status], "content": error_body}
    for status, model in route.other:
        responses[str(status)] = {"description": ERRORS[status], "content": {
            "application/json": {"schema": refs[(model, "serialization")]}}}
    op["responses"] = responses
    op["security"] = [{"bearer": []}] if secured else []
    return op


def _event_schema(route: ApiRoute, refs: Refs) -> dict[str, Any]:
    """One server-sent event, as OpenAPI 3.2 reads an event stream's schema (``event``,
    ``data``...): its ``data`` is JSON of the stream's model (or, with ``stream_done``, of the
    error envelope, or ``[DONE]``)."""
    assert route.stream is not None
    payload = refs[(route.stream, "serialization")]
    if route.stream_done:
        payload = {"anyOf": [payload, refs[(ErrorResponse, "serialization")]]}
    data: dict[str, Any] = {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": payload}
    if route.stream_done:
        data = {"anyOf": [data, {"const": "[DONE]"}]}
    return {"type": "object", "required": ["data"],
            "properties": {"event": {"type": "string"}, "data": data}}


def _ok_text(route: ApiRoute) -> str:
    if route.stream is None:
        return "OK"
    return (f"OK: application/json, or with `stream: true` {SSE} whose `data:` events are "
            f"{route.stream.__name__} objects, ending with `data: [DONE]`")
