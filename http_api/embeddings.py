"""POST /v1/embeddings: OpenAI embeddings, as floats or base64 little-endian float32."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.serving.handlers import embed
from http_api.access import note_tokens
from http_api.body import read_json
from http_api.protocol import EmbeddingCreateRequest
from http_api.sse import until_disconnected


async def embeddings(request: Request) -> Response:
    body = EmbeddingCreateRequest.model_validate(await read_json(request))
    result = await until_disconnected(request, embed(request.app.state.models,
                                                     body.to_request()), lambda: None)
    data = [{"object": "embedding", "index": index,
             "embedding": encode_vector(vector, body.encoding_format)}
            for index, vector in enumerate(result.vectors)]
    tokens = result.num_prompt_tokens
    note_tokens(tokens)
    return JSONResponse({"object": "list", "data": data, "model": result.model.id,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def encode_vector(vector: np.ndarray, encoding_format: str) -> Any:
    """A list of floats, or base64 of the little-endian float32 bytes (as the openai client
    decodes it)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()
