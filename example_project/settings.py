"""Settings of the example project: SQLite and the in-memory channel layer by default.

``DATABASE_URL`` switches the database (e.g. PostgreSQL), ``REDIS_URL`` the channel layer, and
``ANTHROPIC_API_KEY`` decides whether the agent talks to Claude or to the offline demo client
(``DEMO_CLIENT_DELAY``: seconds between its streamed words).
"""

import os
from pathlib import Path

import dj_database_url

from django_agent_session.layers import redis_channel_layer

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "daphne",
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
    "example_project.chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
ASGI_APPLICATION = "example_project.asgi.application"

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
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'example.sqlite3'}"
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # writers queue for the lock (up to 20 s) instead of failing at once with "database is
    # locked" when a transaction that read first goes on to write (Django 5.1+)
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}

if os.environ.get("REDIS_URL"):
    CHANNEL_LAYERS = {"default": redis_channel_layer(os.environ["REDIS_URL"])}
else:
    # Channels' in-memory layer with less work per message (docs/live.md#wiring)
    CHANNEL_LAYERS = {"default": {
        "BACKEND": "django_agent_session.contrib.memory_layer.InMemoryChannelLayer"}}

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# uploaded attachments and other artifact files (docs/files.md)
MEDIA_ROOT = BASE_DIR / "media"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {"TITLE": "django-agent-session example", "VERSION": "0.1.0"}

#: True when no API key is set: the agent answers through the offline demo client
OFFLINE_DEMO = not os.environ.get("ANTHROPIC_API_KEY")

#: seconds between the offline demo client's streamed words (the browser test slows it down)
DEMO_CLIENT_DELAY = float(os.environ.get("DEMO_CLIENT_DELAY", "0.05"))

AGENT_SESSION = {
    # Who besides a conversation's owner may approve or reject its tool calls (refund_order
    # waits for a person): staff with the change permission on ChatAgent, e.g. from the
    # admin's conversation page.
    "APPROVERS": "django_agent_session.admin.staff_approvers",
}
if OFFLINE_DEMO:
    AGENT_SESSION["CLIENTS"] = {"anthropic": "example_project.chat.clients.ExampleDemoClient"}
