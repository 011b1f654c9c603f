"""Model clients: the protocol, the registry, and the built-in providers."""

from .base import Client, ModelRequest, ModelResponse
from .registry import get_client

__all__ = ["Client", "ModelRequest", "ModelResponse", "get_client"]
