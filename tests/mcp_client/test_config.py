"""The --mcp-config file: mistral.rs's shape and ours, and one clear error for a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcp_client.config import McpConfigError, load_config

MISTRALRS = {
    "servers": [
        {"name": "Filesystem Tools", "source": {"type": "Process", "command": "npx",
                                                "args": ["@mcp/fs", "."], "env": {"A": "1"}},
         "tool_prefix": "fs"},
        {"id": "web", "name": "Web", "source": {"type": "Http", "url": "https://x.example/mcp",
                                               "timeout_secs": 12, "headers": {"H": "v"}},
         "bearer_token": "tok", "enabled": False},
    ],
    "auto_register_tools": True, "tool_timeout_secs": 45, "max_concurrent_calls": 3,
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(data))
    return path


def test_a_mistral_rs_file_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MISTRALRS))
    files, web = config.servers
    assert (files.label, files.transport, files.command, files.args, files.env,
            files.tool_prefix, files.enabled) == (
        "Filesystem Tools", "process", "npx", ("@mcp/fs", "."), {"A": "1"}, "fs", True)
    assert (web.label, web.transport, web.url, web.timeout_s, web.enabled) == (
        "Web", "http", "https://x.example/mcp", 12.0, False)
    assert web.headers == {"H": "v", "Authorization": "Bearer tok"}
    assert (config.tool_timeout_s, config.max_concurrent_calls) == (45.0, 3)
    assert "tok" not in repr(web)  # secrets stay out of logs


@pytest.mark.parametrize(("data", "message"), [
    ("not json", "cannot read the MCP config"),
    ({"servers": {}}, "must be an object with a servers list"),
    ({"servers": [{"source": {"type": "Process", "command": "x"}}]}, "needs a name"),
    ({"servers": [{"name": "a", "source": {"type": "WebSocket"}}]},
     "must be Process or Http, not 'websocket'"),
    ({"servers": [{"name": "a", "source": {"type": "Http", "url": "ftp://x"}}]},
     "must be an http(s) URL"),
    ({"servers": [{"name": "a", "source": {"type": "Process"}}]}, "must name the program"),
    ({"servers": [{"name": "a", "source": {"type": "Process", "command": "x"}}] * 2},
     "same name"),
    ({"servers": [], "tool_timeout_secs": 0}, "tool_timeout_secs must be > 0"),
])
def test_a_bad_file_is_one_error_naming_it(tmp_path: Path, data: object, message: str) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(McpConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
