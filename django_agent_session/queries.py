"""Kept for the documented import path; the code lives in :mod:`django_agent_session.store.queries`."""

from .store.queries import *  # noqa: F401,F403
from .store.queries import __all__  # noqa: F401
