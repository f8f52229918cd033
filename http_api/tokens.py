"""POST /tokenize and POST /detokenize: the served models' tokenizers over HTTP."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.serving.tokenize import detokenize as detokenize_ids
from core.serving.tokenize import prepare_tokenize
from core.serving.tokenize import tokenize as tokenize_prompt
from http_api.access import note_tokens
from http_api.body import read_json
from http_api.protocol import DetokenizeRequest, TokenizeRequest


async def tokenize(request: Request) -> Response:
    """Token ids of a prompt, or of chat messages rendered by the chat template (with tools and
    the generation prompt, exactly as a chat request renders them)."""
    body = TokenizeRequest.model_validate(await read_json(request))
    models = request.app.state.models
    result = tokenize_prompt(models, await prepare_tokenize(models, body.to_request()))
    note_tokens(len(result.tokens))
    return JSONResponse({"model": result.model, "tokens": result.tokens,
                         "count": len(result.tokens), "max_model_len": result.max_model_len})


async def detokenize(request: Request) -> Response:
    """The text of token ids (special tokens kept); ids outside the vocabulary are a 400."""
    body = DetokenizeRequest.model_validate(await read_json(request))
    model, text = detokenize_ids(request.app.state.models, body.model, body.tokens)
    return JSONResponse({"model": model, "prompt": text})
