"""Kept for the documented import path; the code lives in :mod:`django_agent_session.contrib.redis`."""

from .contrib.redis import *  # noqa: F401,F403
from .contrib.redis import __all__  # noqa: F401
