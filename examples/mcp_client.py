"""Chat with a running `infermcp serve` through MCP (Streamable HTTP) with the official SDK client.

    make serve            # in one terminal (or: .venv/bin/infermcp serve)
    .venv/bin/python examples/mcp_client.py

INFERMCP_MCP_URL overrides the endpoint (default http://127.0.0.1:8080/mcp); set INFERMCP_API_KEY
when the server was started with --api-key.
"""

from __future__ import annotations

import json
import os

import anyio
import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent, TextResourceContents


async def main() -> None:
    url = os.environ.get("INFERMCP_MCP_URL", "http://127.0.0.1:8080/mcp")
    key = os.environ.get("INFERMCP_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (httpx2.AsyncClient(headers=headers, timeout=300) as http,
                Client(streamable_http_client(url, http_client=http)) as client):
        info = client.server_info
        print(f"connected to {info.name if info else url} (protocol {client.protocol_version})")
        for tool in (await client.list_tools()).tools:
            summary = (tool.description or "").strip().splitlines()[0]
            print(f"  tool {tool.name}: {summary}")

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            print(message or "", end="", flush=True)  # each notification carries the new text

        print("chat (streamed through progress notifications): ", end="")
        result = await client.call_tool(
            "chat",
            {"messages": [{"role": "system", "content": "You are concise."},
                          {"role": "user", "content": "Name three colours."}],
             "max_tokens": 48, "temperature": 0.7, "seed": 1},
            progress_callback=on_progress)
        print()
        if result.is_error:
            text = result.content[0].text if isinstance(result.content[0], TextContent) else ""
            raise SystemExit(f"chat failed: {text}")
        data = result.structured_content or {}
        print(f"  finish_reason={data.get('finish_reason')} usage={data.get('usage')}")

        (models,) = (await client.read_resource("models://list")).contents
        if isinstance(models, TextResourceContents):
            for card in json.loads(models.text):
                print(f"model {card['id']}: context {card['max_model_len']}, {card['dtype']}")


if __name__ == "__main__":
    anyio.run(main)
