"""Who runs queued runs, and how viewers follow them.

:mod:`.executors` (``AGENT_SESSION["EXECUTOR"]``) decide where a session's queue is drained;
:mod:`.drain` is the one loop every executor runs; :mod:`.stream` publishes a run's progress to
the conversation's viewers and keeps the per-run buffer a late viewer catches up from.
"""
