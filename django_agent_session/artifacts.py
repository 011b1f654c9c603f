"""Kept for the documented import path; the code lives in :mod:`django_agent_session.store.artifacts`."""

from .store.artifacts import *  # noqa: F401,F403
from .store.artifacts import __all__  # noqa: F401
