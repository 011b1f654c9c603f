"""Kept for the documented import path; the code lives in :mod:`django_agent_session.store.manager`."""

from .store.manager import *  # noqa: F401,F403
from .store.manager import __all__  # noqa: F401
