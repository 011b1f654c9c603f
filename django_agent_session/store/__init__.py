"""The only writer of session rows, and the reads, history and maintenance built on them.

``turns`` (lease, begin, commit, fail), ``manager`` (the methods every session model's manager
gets), ``queries``, ``history`` (fork, rewind), ``export``, ``retention`` and ``artifacts``.
Surfaces call these; none of them writes a session row itself.
"""

from .turns import SessionStore

__all__ = ["SessionStore"]
