"""Small MCP servers the MCP tests start: over stdio as the client's subprocess, or over
streamable HTTP on loopback."""
