"""Kept for the documented import path; the code lives in :mod:`django_agent_session.declaration.tools`."""

from .declaration.tools import *  # noqa: F401,F403
from .declaration.tools import __all__  # noqa: F401
