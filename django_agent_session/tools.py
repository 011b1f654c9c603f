"""Kept for the documented import path; the code lives in :mod:`django_agent_session.declaration.tools`
(and :mod:`~django_agent_session.declaration.mcp` for MCP toolsets)."""

from .declaration.mcp import MCPToolset
from .declaration.tools import *  # noqa: F401,F403
from .declaration.tools import __all__ as _tools

__all__ = [*_tools, "MCPToolset"]
