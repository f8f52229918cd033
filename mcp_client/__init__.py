"""The MCP client side: the servers the model may use (``--mcp-config``, ``--mcp-allow-url``),
reached with the official ``mcp`` SDK for the Responses API's remote MCP tools."""

from mcp_client.clients import McpClients
from mcp_client.config import McpClientConfig, McpConfigError, McpServerConfig, load_config

__all__ = ["McpClientConfig", "McpClients", "McpConfigError", "McpServerConfig", "load_config"]
