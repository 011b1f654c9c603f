"""Kept for the documented import path; the code lives in :mod:`django_agent_session.store.retention`."""

from .store.retention import *  # noqa: F401,F403
from .store.retention import __all__  # noqa: F401
