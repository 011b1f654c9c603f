"""Django settings for the benchmarks.

The database is a SQLite *file* (``BENCH_SQLITE_PATH``, default
``benchmarks/results/bench.sqlite3``) unless ``DATABASE_URL`` names another one (PostgreSQL).
The channel layer is in-memory unless ``REDIS_URL`` is set. The concrete session models are the
test suite's (``tests.testapp``), so the benchmarks measure the same declarations the tests use.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from django_agent_session.layers import redis_channel_layer

RESULTS_DIR = Path(__file__).resolve().parent / "results"

SECRET_KEY = "benchmarks-only-secret"
DEBUG = False  # DEBUG=True would record every query and skew the timings
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "django_agent_session",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

_sqlite_path = os.environ.get("BENCH_SQLITE_PATH") or str(RESULTS_DIR / "bench.sqlite3")
_max_age = os.environ.get("BENCH_CONN_MAX_AGE")
DATABASES = {
    # persistent connections by default, as in a long-lived worker; the soak's daphne processes
    # run with BENCH_CONN_MAX_AGE=0, as Django advises under ASGI (a persistent connection per
    # thread of sync_to_async is never closed); the soak also turns health checks on
    # (BENCH_CONN_HEALTH_CHECKS=1), so a connection the database dropped (pg_terminate_backend,
    # a restart) is replaced instead of failing a request. Off elsewhere: under Channels they
    # cost a ``SELECT 1`` per database_sync_to_async call, 8 % of a busy daphne's time
    # (docs/performance.md), which is the configuration's price, not the library's
    "default": dj_database_url.parse(os.environ.get("DATABASE_URL") or f"sqlite:///{_sqlite_path}",
                                     conn_max_age=None if _max_age is None else int(_max_age),
                                     conn_health_checks=os.environ.get(
                                         "BENCH_CONN_HEALTH_CHECKS") == "1")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # BEGIN IMMEDIATE avoids "database is locked" under concurrent writers;
    # BENCH_SQLITE_JOURNAL=wal (default) or "delete" (Django's default: rollback journal,
    # synchronous=FULL, one fsync per commit)
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    if os.environ.get("BENCH_SQLITE_JOURNAL", "wal") == "wal":
        # the usual production setting for SQLite: write-ahead log, fsync at checkpoints only
        DATABASES["default"]["OPTIONS"]["init_command"] = (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
elif os.environ.get("BENCH_PREPARE_THRESHOLD", "5") != "none":
    # psycopg's prepared statements, which Django leaves off for transaction-mode poolers:
    # the turn's statements are prepared after 5 runs (docs/performance.md); the ORM's
    # queries, the reference row's included, bind on the client and are never prepared.
    # BENCH_PREPARE_THRESHOLD=none measures Django's default
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = int(
        os.environ.get("BENCH_PREPARE_THRESHOLD", "5"))

CHANNEL_LAYERS = {"default": {
    "BACKEND": "django_agent_session.contrib.memory_layer.InMemoryChannelLayer"}}
if os.environ.get("REDIS_URL"):
    # no client read timeout under redis-py 8, a large capacity (django_agent_session.layers)
    CHANNEL_LAYERS = {"default": redis_channel_layer(
        os.environ["REDIS_URL"], prefix=os.environ.get("BENCH_REDIS_PREFIX", "agent-bench"))}

ASGI_APPLICATION = "benchmarks.asgi.application"
# artifact and attachment files of benchmark runs: never in the checkout
MEDIA_ROOT = os.environ.get("BENCH_MEDIA_ROOT", "/tmp/agent-session-bench-media")
REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
AGENT_SESSION: dict = {"TURN_WAIT_SECONDS": 60.0}
if os.environ.get("BENCH_LOOPBACK_URL"):
    # ASGI processes started by the live benchmarks call the benchmark's loopback server
    AGENT_SESSION["ANTHROPIC"] = {"BASE_URL": os.environ["BENCH_LOOPBACK_URL"],
                                  # BENCH_API_KEY: the restart benchmark names each process
                                  # by its key, so the loopback server tells who calls it
                                  "API_KEY": os.environ.get("BENCH_API_KEY", "bench"),
                                  "MAX_RETRIES": 0}
# the restart benchmark shortens the leases and the shutdown grace (seconds)
for _variable, _setting in (("BENCH_TURN_LEASE", "TURN_LEASE_SECONDS"),
                            ("BENCH_OWNER_LEASE", "OWNER_LEASE_SECONDS"),
                            ("BENCH_SHUTDOWN_GRACE", "SHUTDOWN_GRACE_SECONDS")):
    if os.environ.get(_variable):
        AGENT_SESSION[_setting] = float(os.environ[_variable])

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "WARNING", "handlers": []},
}
if os.environ.get("BENCH_LOG_LEVEL"):  # e.g. INFO, with BENCH_KEEP_LOGS=1: timestamped logs
    LOGGING["formatters"] = {"stamped": {"format": "%(asctime)s %(process)d %(levelname)s "
                                                   "%(name)s: %(message)s"}}
    LOGGING["handlers"] = {"stderr": {"class": "logging.StreamHandler", "formatter": "stamped"}}
    LOGGING["root"] = {"level": os.environ["BENCH_LOG_LEVEL"], "handlers": ["stderr"]}
