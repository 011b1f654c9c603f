"""System checks of the project's setup: the ``AGENT_SESSION`` dict (E004, E007, E008) and the
apps the REST and live surfaces need (E009, W003, I001) and the OpenAPI schema class (W004).

The checks of ``Agent`` declarations (E001-E003, E005, E006, W001, W002) are in
``tests/declaration/test_options.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.template import TemplateDoesNotExist
from django.test import override_settings
from rest_framework.renderers import JSONRenderer

from django_agent_session.api.viewsets import AgentSessionViewSet
from django_agent_session.conf import DEFAULTS, agent_settings

ROOT = Path(__file__).resolve().parent.parent

#: a URLconf without the REST API (``override_settings(ROOT_URLCONF=__name__)``)
urlpatterns: list = []


def run_python(tmp_path, settings: str, *args: str) -> subprocess.CompletedProcess:
    """``python *args`` in a new process whose settings are the test settings followed by
    ``settings`` (the checks and models run as they do when Django starts)."""
    (tmp_path / "subprocess_settings.py").write_text(
        f"from tests.settings import *  # noqa\n{settings}\n")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "subprocess_settings",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def findings(**overrides):
    """``(id, message)`` of this app's findings, with ``overrides`` applied to the settings."""
    with override_settings(**overrides):
        return [(m.id, m.msg) for m in run_checks() if m.id.startswith("django_agent_session")]


def ids(**overrides):
    return [found_id for found_id, _ in findings(**overrides)]


def without(*names):
    return [app for app in settings.INSTALLED_APPS if app not in names]


# -- E004: unknown keys ---------------------------------------------------------------------


def test_a_typo_is_one_line_of_manage_py_check_not_an_import_traceback(tmp_path):
    """Models read settings as they are imported: the typo must not stop Django from starting,
    so ``check`` itself gets to report it."""
    result = run_python(tmp_path, "AGENT_SESSION = {**AGENT_SESSION, 'EXECUTR': 'inline'}",
                        "-m", "django", "check")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert ("?: (django_agent_session.E004) AGENT_SESSION['EXECUTR'] is not a setting. "
            "Did you mean 'EXECUTOR'?") in result.stderr.splitlines()
    assert "1 issue" in result.stderr


def test_manage_py_check_names_the_key_and_the_nearest_setting():
    with override_settings(AGENT_SESSION={"EXECUTR": "inline", "QUEUE_MAX": 3}):
        assert agent_settings.QUEUE_MAX == 3  # reading goes on, without the typo
        with pytest.raises(SystemCheckError) as raised:
            call_command("check")
    assert ("(django_agent_session.E004) AGENT_SESSION['EXECUTR'] is not a setting. "
            "Did you mean 'EXECUTOR'?") in str(raised.value)


def test_one_finding_per_unknown_key_in_any_case():
    assert findings(AGENT_SESSION={"turn_lease_seconds": 1, "APROVERS": None}) == [
        ("django_agent_session.E004",
         "AGENT_SESSION['turn_lease_seconds'] is not a setting. "
         "Did you mean 'TURN_LEASE_SECONDS'?"),
        ("django_agent_session.E004",
         "AGENT_SESSION['APROVERS'] is not a setting. Did you mean 'APPROVERS'?"),
    ]


def test_a_key_like_no_setting_lists_the_known_ones():
    with override_settings(AGENT_SESSION={"ZZZ": 1}):
        [message] = [m for m in run_checks() if m.id == "django_agent_session.E004"]
    assert message.msg == "AGENT_SESSION['ZZZ'] is not a setting."
    assert message.hint.startswith("Known: ANTHROPIC, API_PAGE_SIZE")


def test_unknown_keys_of_fixed_key_dicts():
    assert findings(AGENT_SESSION={"RETENTION": {"MAX_AGE": 30},
                                   "ANTHROPIC": {"APIKEY": "k"}}) == [
        ("django_agent_session.E004",
         "AGENT_SESSION['ANTHROPIC']['APIKEY'] is not a setting. Did you mean 'API_KEY'?"),
        ("django_agent_session.E004",
         "AGENT_SESSION['RETENTION']['MAX_AGE'] is not a setting. "
         "Did you mean 'MAX_AGE_DAYS'?"),
    ]
    # providers and model ids are the project's own names
    assert findings(AGENT_SESSION={"CLIENTS": {"acme": "json.JSONDecoder"},
                                   "CONTEXT_WINDOWS": {"acme-1": 1000}}) == []


def test_a_typo_silences_the_checks_that_read_settings():
    """One mistake, one finding: E002 would follow from the typo'd key's neighbour."""
    assert ids(AGENT_SESSION={"CLIENTS": {"x": "nowhere.Client"}, "EXECUTR": 1}) == [
        "django_agent_session.E004"]


# -- E007: values of the wrong kind ---------------------------------------------------------


def test_values_of_the_wrong_kind():
    assert sorted(findings(AGENT_SESSION={
        "TURN_LEASE_SECONDS": "120", "QUEUE_MAX": True, "CLIENTS": "demo",
        "RETENTION": [], "TOOL_TIMEOUT": None, "INACTIVITY_TIMEOUT": None,
        "API_PAGE_SIZE": 50, "TURN_WAIT_SECONDS": 5})) == [
        ("django_agent_session.E007", "AGENT_SESSION['CLIENTS'] must be a dict, not str 'demo'."),
        ("django_agent_session.E007",
         "AGENT_SESSION['QUEUE_MAX'] must be an integer, not bool True."),
        ("django_agent_session.E007", "AGENT_SESSION['RETENTION'] must be a dict, not list []."),
        ("django_agent_session.E007",
         "AGENT_SESSION['TURN_LEASE_SECONDS'] must be a number, not str '120'."),
    ]


def test_a_settings_value_that_is_not_a_dict():
    with override_settings(AGENT_SESSION=[("QUEUE_MAX", 3)]):
        assert agent_settings.QUEUE_MAX == DEFAULTS["QUEUE_MAX"]
    assert findings(AGENT_SESSION=[("QUEUE_MAX", 3)]) == [
        ("django_agent_session.E007", "AGENT_SESSION must be a dict, not list.")]


def test_an_artifact_storage_that_is_no_storages_alias():
    with override_settings(AGENT_SESSION={"ARTIFACT_STORAGE": "artifacts"}):
        [message] = [m for m in run_checks() if m.id.startswith("django_agent_session")]
    assert (message.id, message.msg) == (
        "django_agent_session.E007",
        "AGENT_SESSION['ARTIFACT_STORAGE'] = 'artifacts' is not an alias of settings.STORAGES.")
    assert message.hint == "Aliases: default, staticfiles (None: default_storage)."
    storages = {**settings.STORAGES, "artifacts": settings.STORAGES["default"]}
    assert ids(AGENT_SESSION={"ARTIFACT_STORAGE": "artifacts"}, STORAGES=storages) == []


def test_an_unknown_artifact_storage_at_startup_is_reported_by_check(tmp_path):
    """The Artifact model's FileField takes its storage at import: an unknown alias must not
    stop Django from starting, and using the storage says what is wrong."""
    settings = "AGENT_SESSION = {**AGENT_SESSION, 'ARTIFACT_STORAGE': 'nope'}"
    result = run_python(tmp_path, settings, "-m", "django", "check")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert ("?: (django_agent_session.E007) AGENT_SESSION['ARTIFACT_STORAGE'] = 'nope' is not "
            "an alias of settings.STORAGES.") in result.stderr.splitlines()
    use = ("import django; django.setup()\n"
           "from django_agent_session.models import Artifact\n"
           "Artifact._meta.get_field('file').storage.exists('x')\n")
    result = run_python(tmp_path, settings, "-c", use)
    assert result.stderr.splitlines()[-1] == (
        "django.core.exceptions.ImproperlyConfigured: AGENT_SESSION['ARTIFACT_STORAGE'] = "
        "'nope' is not an alias of STORAGES.")


# -- E008: dotted paths ---------------------------------------------------------------------


def test_dotted_paths_that_cannot_be_imported():
    assert findings(AGENT_SESSION={
        "FACTORY_ROUTER": "nowhere.router",
        "API_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny", "nowhere.Perm"],
        "API_THROTTLE_CLASSES": ["rest_framework.throttling.NoSuchThrottle"],
        "APPROVERS": "django_agent_session.admin.staff_approvers"}) == [
        ("django_agent_session.E008",
         "AGENT_SESSION['API_PERMISSION_CLASSES'][1] = 'nowhere.Perm' cannot be imported: "
         "No module named 'nowhere'"),
        ("django_agent_session.E008",
         "AGENT_SESSION['API_THROTTLE_CLASSES'][0] = 'rest_framework.throttling.NoSuchThrottle' "
         "cannot be imported: Module \"rest_framework.throttling\" does not define a "
         "\"NoSuchThrottle\" attribute/class"),
        ("django_agent_session.E008",
         "AGENT_SESSION['FACTORY_ROUTER'] = 'nowhere.router' cannot be imported: "
         "No module named 'nowhere'"),
    ]


def test_an_executor_is_an_alias_or_a_dotted_path():
    assert ids(AGENT_SESSION={"EXECUTOR": "tasks"}) == []
    assert ids(AGENT_SESSION={
        "EXECUTOR": "django_agent_session.runs.executors.InlineExecutor"}) == []
    with override_settings(AGENT_SESSION={"EXECUTOR": "celery"}):
        [message] = [m for m in run_checks() if m.id.startswith("django_agent_session")]
    assert message.id == "django_agent_session.E008"
    assert message.msg.startswith("AGENT_SESSION['EXECUTOR'] = 'celery' cannot be imported")
    assert message.hint == "Use 'inline' or 'tasks', or a dotted path."


# -- E009, W003, I001: the apps of the REST and live surfaces -------------------------------


@pytest.mark.django_db
def test_the_browsable_api_fails_without_rest_framework_installed(client, django_user_model):
    """What E009 is about: JSON still works, a browser gets a server error."""
    client.force_login(django_user_model.objects.create_user("alice"))
    with override_settings(INSTALLED_APPS=without("rest_framework", "drf_spectacular")):
        assert client.get("/api/chat-agents/", HTTP_ACCEPT="application/json").status_code == 200
        with pytest.raises(TemplateDoesNotExist, match="rest_framework/api.html"):
            client.get("/api/chat-agents/", HTTP_ACCEPT="text/html")


def test_rest_framework_missing_while_the_api_is_routed():
    apps = without("rest_framework", "drf_spectacular")
    assert ids(INSTALLED_APPS=apps) == ["django_agent_session.E009"]
    assert ids() == []
    # a project without the REST API needs no rest_framework app
    assert ids(INSTALLED_APPS=apps, ROOT_URLCONF=__name__) == []


def test_rest_framework_missing_with_json_only_renderers(monkeypatch):
    monkeypatch.setattr(AgentSessionViewSet, "renderer_classes", [JSONRenderer])
    assert ids(INSTALLED_APPS=without("rest_framework", "drf_spectacular")) == []


def test_live_sessions_without_a_channel_layer():
    # an ASGI application is reason enough to expect live sessions, Channels' apps or not
    apps = without("channels")
    assert ids(INSTALLED_APPS=apps, CHANNEL_LAYERS={}) == ["django_agent_session.W003"]
    assert ids(INSTALLED_APPS=apps, CHANNEL_LAYERS={}, ASGI_APPLICATION=None) == []


def test_runserver_without_daphne_is_a_hint_in_development(monkeypatch):
    assert ids(DEBUG=True) == ["django_agent_session.I001"]
    assert ids(DEBUG=True, ASGI_APPLICATION=None) == []
    assert ids(DEBUG=False) == []
    # daphne installed (not really: its own check would then stay registered for the suite)
    installed = apps.is_installed
    monkeypatch.setattr(apps, "is_installed", lambda name: name == "daphne" or installed(name))
    assert ids(DEBUG=True) == []


# -- W004: drf-spectacular's schema view without its schema class ---------------------------


def _no_schema_class():
    return {k: v for k, v in settings.REST_FRAMEWORK.items() if k != "DEFAULT_SCHEMA_CLASS"}


SCHEMA_REQUEST = """
import django
django.setup()
from django.test import Client
print(Client(raise_request_exception=False).get("/api/schema/").status_code)
"""


def test_the_schema_view_fails_without_drf_spectacular_s_schema_class(tmp_path):
    """What W004 is about. In a new process: the viewsets take their schema class when the
    URLconf builds them."""
    settings = ("REST_FRAMEWORK = {k: v for k, v in REST_FRAMEWORK.items()\n"
                "                  if k != 'DEFAULT_SCHEMA_CLASS'}")
    result = run_python(tmp_path, settings, "-c", SCHEMA_REQUEST)
    assert result.stdout.split() == ["500"], result.stderr[-2000:]
    result = run_python(tmp_path, settings, "-m", "django", "check")
    assert "(django_agent_session.W004)" in result.stderr


def test_schema_view_routed_without_drf_spectacular_s_schema_class():
    assert ids(REST_FRAMEWORK=_no_schema_class()) == ["django_agent_session.W004"]
    found = dict(findings(REST_FRAMEWORK=_no_schema_class()))["django_agent_session.W004"]
    assert "DEFAULT_SCHEMA_CLASS" in found
    # no schema view routed: nothing to warn about
    assert ids(REST_FRAMEWORK=_no_schema_class(), ROOT_URLCONF=__name__) == []
