"""Kept for the documented import path; the code lives in :mod:`django_agent_session.store.export`."""

from .store.export import *  # noqa: F401,F403
from .store.export import __all__  # noqa: F401
