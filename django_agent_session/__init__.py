"""Persistent, live LLM agent conversations for Django."""

__version__ = "0.1.0"
