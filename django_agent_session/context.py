"""Kept for the documented import path; the code lives in :mod:`django_agent_session.engine.context`."""

from .engine.context import *  # noqa: F401,F403
from .engine.context import __all__  # noqa: F401
