"""The ``--mcp-config`` file: the MCP servers the model may use.

JSON, in mistral.rs's shape (so its users can bring their file) or with our own names::

    {"servers": [
       {"name": "files", "source": {"type": "Process", "command": "npx", "args": [...],
                                    "env": {...}, "work_dir": "..."},
        "tool_prefix": "fs", "enabled": true},
       {"label": "search", "source": {"type": "Http", "url": "https://...",
                                      "headers": {...}, "timeout_secs": 30},
        "bearer_token": "..."}],
     "tool_timeout_secs": 30, "max_concurrent_calls": 8}

``name`` or ``label`` is the ``server_label`` requests use. ``Process`` runs a stdio server;
``Http`` reaches Streamable HTTP (falling back to legacy SSE).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class McpConfigError(ValueError):
    """The config file cannot be used (the message names the file and the field)."""


@dataclass(frozen=True)
class McpServerConfig:
    label: str
    transport: str  # "process" or "http"
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)
    work_dir: str | None = None
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeout_s: float = 30.0
    tool_prefix: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class McpClientConfig:
    servers: tuple[McpServerConfig, ...] = ()
    tool_timeout_s: float = 30.0
    max_concurrent_calls: int = 8


def load_config(path: Path) -> McpClientConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise McpConfigError(f"{path}: cannot read the MCP config ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("servers", []), list):
        raise McpConfigError(f"{path}: the MCP config must be an object with a servers list")
    servers = [_server(path, i, s) for i, s in enumerate(data.get("servers", []))]
    labels = [s.label for s in servers]
    if len(set(labels)) != len(labels):
        raise McpConfigError(f"{path}: two MCP servers have the same name")
    timeout = data.get("tool_timeout_secs", 30)
    concurrent = data.get("max_concurrent_calls", 8)
    if not isinstance(timeout, int | float) or timeout <= 0 \
            or not isinstance(concurrent, int) or concurrent < 1:
        raise McpConfigError(f"{path}: tool_timeout_secs must be > 0 and max_concurrent_calls "
                             ">= 1")
    return McpClientConfig(tuple(servers), float(timeout), concurrent)


def _server(path: Path, i: int, raw: Any) -> McpServerConfig:
    where = f"{path}: servers[{i}]"
    if not isinstance(raw, dict):
        raise McpConfigError(f"{where} must be an object")
    label = raw.get("label") or raw.get("name") or raw.get("id")
    source = raw.get("source") or {}
    kind = str(source.get("type", "")).lower()
    if not isinstance(label, str) or not label:
        raise McpConfigError(f"{where} needs a name")
    headers = dict(source.get("headers") or {})
    if raw.get("bearer_token"):
        headers["Authorization"] = f"Bearer {raw['bearer_token']}"
    common: dict[str, Any] = dict(label=label, tool_prefix=raw.get("tool_prefix"),
                                  enabled=raw.get("enabled", True) is not False)
    if kind == "process":
        if not isinstance(source.get("command"), str) or not source["command"]:
            raise McpConfigError(f"{where}.source.command must name the program to run")
        return McpServerConfig(transport="process", command=source["command"],
                               args=tuple(str(a) for a in source.get("args") or ()),
                               env={str(k): str(v) for k, v in (source.get("env") or {}).items()},
                               work_dir=source.get("work_dir"), **common)
    if kind == "http":
        if not isinstance(source.get("url"), str) or not source["url"].startswith(("http://",
                                                                                  "https://")):
            raise McpConfigError(f"{where}.source.url must be an http(s) URL")
        return McpServerConfig(transport="http", url=source["url"], headers=headers,
                               timeout_s=float(source.get("timeout_secs") or 30), **common)
    raise McpConfigError(f"{where}.source.type must be Process or Http, not {kind or None!r}")
