"""Benchmarks of django-agent-session: per-turn overhead, queries per turn, streaming latency
and scale. Run ``python -m benchmarks --help``; see docs/performance.md."""
