"""Kept for the documented import path; the code lives in :mod:`django_agent_session.store.history`."""

from .store.history import *  # noqa: F401,F403
from .store.history import __all__  # noqa: F401
