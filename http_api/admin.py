"""POST /re_isq: re-quantize the loaded chat model while the server runs."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.serving.registry import ModelRegistry
from http_api.body import read_json
from http_api.protocol import ReIsqRequest


async def re_isq(request: Request) -> Response:
    body = ReIsqRequest.model_validate(await read_json(request))
    models: ModelRegistry = request.app.state.models
    model = models.chat_model(body.model)
    await model.quantize(body.ggml_type)
    return JSONResponse({"object": "re_isq", "model": model.id, "ggml_type": body.ggml_type,
                         "quantization": model.quantization, "weight_bytes": model.weight_bytes,
                         "weight_mib": round(model.weight_bytes / 2**20, 1)})
