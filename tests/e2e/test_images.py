"""Images sent to the real server's default (text-only) model: each front end answers a 400 or
a tool error naming the part and the model's input modalities, and fetches nothing."""

from __future__ import annotations

import base64
import io
from typing import Any

import openai
import pytest
from mcp.client import Client
from mcp.types import TextContent
from PIL import Image

from tests.e2e.conftest import Server

PNG = io.BytesIO()
Image.new("RGB", (8, 8), "red").save(PNG, "PNG")
PNG_BASE64 = base64.b64encode(PNG.getvalue()).decode()


def asking(part: dict[str, Any]) -> list[Any]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]


@pytest.mark.parametrize(("part", "words"), [
    ({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_BASE64}"}},
     "is an image_url part"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,not-an-image"}},
     "is an image_url part"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
     "is an input_audio part"),
])
def test_chat_media_on_a_text_model_is_a_400_naming_the_part(
        client: openai.OpenAI, server: Server, part: dict[str, Any], words: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="default", messages=asking(part), max_tokens=1)
    assert info.value.param == "messages[0].content[1]"
    message = str(info.value.message)
    assert words in message and f"'{server.model_id}' reads only text" in message
    assert "(its input modalities: text)" in message


def test_a_responses_image_url_is_refused_without_a_fetch(client: openai.OpenAI) -> None:
    image = {"type": "input_image", "image_url": "http://127.0.0.1:9/never.png",
             "detail": "auto"}
    items: Any = [{"role": "user", "content": [{"type": "input_text", "text": "What?"}, image]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="default", max_output_tokens=1, input=items)
    assert info.value.param == "input[0].content[1]"
    assert "(its input modalities: text)" in str(info.value.message)


async def test_mcp_image_content_is_a_tool_error_naming_the_modalities(server: Server) -> None:
    image = {"type": "image", "data": PNG_BASE64, "mimeType": "image/png"}
    async with Client(f"{server.base_url}/mcp", read_timeout_seconds=120) as mcp:
        result = await mcp.call_tool("chat", {"messages": asking(image), "max_tokens": 1})
    assert result.is_error and isinstance(result.content[0], TextContent)
    assert "messages[0].content[1]" in result.content[0].text
    assert "(its input modalities: text)" in result.content[0].text
