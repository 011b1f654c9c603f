"""Settings for the test suite: SQLite by default, PostgreSQL when DATABASE_URL says so."""

import os
from importlib.util import find_spec

import dj_database_url

from django_agent_session.layers import redis_channel_layer

SECRET_KEY = "tests-only-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "django_agent_session",
    "tests.testapp",
]

# the "tasks" executor's tables: Django's Tasks framework (django.tasks on Django 6, the
# django-tasks backport on 5.2) and the django-tasks-db backend. TASKS stays unset (tasks run at
# once where they are enqueued); tests/runs/test_tasks_executor.py configures its own backends.
if find_spec("django_tasks_db"):
    if not find_spec("django.tasks"):
        INSTALLED_APPS.append("django_tasks")
    INSTALLED_APPS.append("django_tasks_db")

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or "sqlite:///:memory:", conn_max_age=0
    )
}
# one test database per process, so concurrent runs (and helpers) never share one
_RUN = os.environ.get("TEST_DB_SUFFIX") or str(os.getpid())
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # a file (not shared memory) so threads, async tests and subprocesses see one database
    DATABASES["default"]["NAME"] = os.environ.get("SQLITE_PATH", "tests-db.sqlite3")
    DATABASES["default"]["TEST"] = {"NAME": f"/tmp/agent-session-test-{_RUN}.sqlite3"}
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_agent_session_{_RUN}"}
    if os.environ.get("PG_PREPARE_THRESHOLD"):
        # psycopg's prepared statements (the hot path binds its statements on the server)
        DATABASES["default"]["OPTIONS"] = {
            "prepare_threshold": int(os.environ["PG_PREPARE_THRESHOLD"])}

# files a test stores without the ``tmp_storage`` fixture land here, never in the checkout
MEDIA_ROOT = f"/tmp/agent-session-media-{_RUN}"

# the library's in-memory layer (Channels' own is used by tests/runs/test_stream.py)
CHANNEL_LAYERS = {"default": {
    "BACKEND": "django_agent_session.contrib.memory_layer.InMemoryChannelLayer"}}
if os.environ.get("REDIS_URL"):
    CHANNEL_LAYERS = {"default": redis_channel_layer(os.environ["REDIS_URL"])}

STATIC_URL = "/static/"
# tests create many users: a fast hasher keeps them cheap
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ASGI_APPLICATION = "tests.asgi.application"

AGENT_SESSION = {
    "TURN_WAIT_SECONDS": 30.0,
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {"TITLE": "django-agent-session tests", "VERSION": "0"}
