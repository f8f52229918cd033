"""The MCP tools of the Responses API (create, get, delete) and the ``responses://{id}``
resource: the same handler and the same stored responses as ``/v1/responses``."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.types import CallToolResult, TextContent
from pydantic import Field

from core.engine.params import SamplingParams
from core.errors import InferError, ResponseNotFoundError
from core.responses import handler as responses
from core.responses.mcp import McpToolHost
from core.responses.store import ResponseStore
from core.serving.registry import ModelRegistry
from mcp_server.schemas import DeletedResponse, ResponseObject
from mcp_server.tools import MaxTokens, MinP, Stop, Temperature, TopK, TopP, reports_errors

Input = Annotated[str | list[dict[str, Any]], Field(description=(
    "the user's message, or a list of input items: {role, content} messages (roles user, "
    "system, developer, assistant; content a string or input_text parts and, for a model "
    "that reads images, {type: input_image, image_url: a base64 data: URI} parts), "
    "{type: function_call, call_id, name, arguments} and "
    "{type: function_call_output, call_id, output}"))]


class ResponseTools:
    """Tools over the stored responses; each docstring is the description a model reads."""

    def __init__(self, models: ModelRegistry, store: ResponseStore,
                 mcp_host: McpToolHost | None = None) -> None:
        self.models = models
        self.store = store
        self.mcp_host = mcp_host  # reaches the MCP servers of mcp tools

    @reports_errors
    async def create_response(
        self,
        input: Input,
        ctx: Context,
        instructions: str | None = None,
        previous_response_id: str | None = None,
        model: str = "default",
        store: bool = True,
        max_output_tokens: MaxTokens | None = None,
        temperature: Temperature | None = None,
        top_p: TopP | None = None,
        top_k: TopK | None = None,
        min_p: MinP | None = None,
        stop: Stop = None,
        seed: int | None = None,
        text: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        truncation: Literal["auto", "disabled"] = "disabled",
        metadata: dict[str, str] | None = None,
    ) -> Annotated[CallToolResult, ResponseObject]:
        """Generate a model response, OpenAI Responses API style, with server-side
        conversation state.

        Give `input` (a string or input items) and optionally `instructions` (a system
        message for this turn only). To continue a conversation, pass the `id` of an earlier
        response as previous_response_id and only the new input: the server replays the stored
        conversation. Responses are stored unless store is false. Returns the response object
        (id, status completed or incomplete, output items, usage) plus output_text.

        text {"format": {"type": "json_schema", "name": ..., "schema": {...}}} or
        {"format": {"type": "json_object"}} enforces JSON output. Function tools in the flat
        form {"type": "function", "name", "parameters"} with tool_choice auto | required |
        none | {"type": "function", "name": ...} produce function_call output items; answer
        them with function_call_output input items in the next turn. truncation "auto" drops
        the oldest tokens of a conversation longer than the context instead of failing.
        """
        request = responses.ResponseRequest(
            input=input, params=SamplingParams.from_optional(
                max_tokens=max_output_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                min_p=min_p, stop=stop, seed=seed),
            model=model, instructions=instructions, previous_response_id=previous_response_id,
            store=store, text_format=(text or {}).get("format"), tools=tools,
            tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
            truncation=truncation, metadata=metadata)
        run = await responses.start_response(self.models, self.store, request, self.mcp_host)
        total = float(max_output_tokens or run.model.max_model_len)
        final: dict[str, Any] = {}
        done = 0
        try:
            async with contextlib.aclosing(run.events()) as events:
                async for event in events:
                    if event["type"] == "response.output_text.delta":
                        done += 1
                        await ctx.report_progress(done, total, event["delta"])
                    final = event.get("response", final)
        finally:
            run.abort()
        return _result(final)

    @reports_errors
    async def get_response(
        self, response_id: Annotated[str, Field(description="a response's id (resp_...)")]
    ) -> Annotated[CallToolResult, ResponseObject]:
        """Fetch a stored response by its id: the same object create_response returned
        (output items, usage, status). Unknown, deleted, expired or unstored (store false)
        responses are an error."""
        return _result(await responses.get_response(self.store, response_id))

    @reports_errors
    async def delete_response(
        self, response_id: Annotated[str, Field(description="a response's id (resp_...)")]
    ) -> DeletedResponse:
        """Delete a stored response and its conversation history; it can no longer be
        fetched or continued with previous_response_id. Unknown ids are an error."""
        return DeletedResponse(**await responses.delete_response(self.store, response_id))

    async def read_response(self, response_id: str) -> str:
        """The stored response object as JSON (the ``responses://{response_id}`` resource)."""
        try:
            return json.dumps(await responses.get_response(self.store, response_id))
        except ResponseNotFoundError as exc:
            raise ResourceNotFoundError(exc.message) from exc
        except InferError as exc:
            raise ResourceError(exc.message) from exc


def _result(response: dict[str, Any]) -> CallToolResult:
    """Text content: the output text, or the function calls as JSON when it made any."""
    structured = ResponseObject(**response, output_text=output_text(response))
    calls = [{k: item[k] for k in ("call_id", "name", "arguments")}
             for item in response["output"] if item["type"] == "function_call"]
    text = json.dumps(calls) if calls else structured.output_text
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content=structured.model_dump(mode="json"))


def output_text(response: dict[str, Any]) -> str:
    """Every output_text part of the response's messages, joined (as the OpenAI SDK does)."""
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")
