"""Artifacts: stored through Django's storage API, described by checksum/size/type, cleaned up."""

from __future__ import annotations

import hashlib
import io

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.test import override_settings

from django_agent_session.artifacts import (
    asave_artifact,
    delete_artifact,
    get_artifact,
    open_artifact,
    read_artifact,
    save_artifact,
)
from django_agent_session.models import AgentRun, Artifact
from django_agent_session.tools import ToolContext
from tests.testapp.models import ChatAgent, PlainAgent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def storage(tmp_storage):
    return tmp_storage


@pytest.fixture
def session(scripted, user):
    scripted.enqueue("Here you go.")
    return ChatAgent.objects.start_session("Make me a report", owner=user,
                                           instruction_args={"company_name": "Acme"})


def stored_files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_save_records_checksum_size_type_and_links(session, storage):
    run = session.runs.get()
    artifact = save_artifact(session, "reports/q1.csv", b"a,b\n1,2\n", run=run,
                             metadata={"rows": 1})

    artifact.refresh_from_db()
    assert artifact.session == session and artifact.run == run
    assert artifact.size == 8
    assert artifact.checksum == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert artifact.content_type == "text/csv"
    assert artifact.metadata == {"rows": 1}
    assert artifact.file.name == f"agent_artifacts/{session.pk}/{artifact.pk}/q1.csv"
    assert (storage / artifact.file.name).read_bytes() == b"a,b\n1,2\n"
    assert list(session.artifacts.all()) == [artifact]
    assert read_artifact(session, "reports/q1.csv") == b"a,b\n1,2\n"
    with open_artifact(session, "reports/q1.csv") as fh:
        assert fh.read() == b"a,b\n1,2\n"


@pytest.mark.parametrize("content, expected, content_type", [
    ("héllo", "héllo".encode(), "text/plain; charset=utf-8"),
    (ContentFile(b"\x00\x01", name="x.bin"), b"\x00\x01", "application/octet-stream"),
    (io.BytesIO(b"stream"), b"stream", "application/octet-stream"),
])
def test_content_kinds(session, content, expected, content_type):
    artifact = save_artifact(session, "blob", content)
    assert read_artifact(session, "blob") == expected
    assert artifact.size == len(expected)
    assert artifact.checksum == hashlib.sha256(expected).hexdigest()
    assert artifact.content_type == content_type


def test_explicit_content_type_and_filename(session):
    artifact = save_artifact(session, "chart", b"<svg/>", content_type="image/svg+xml",
                             filename="../../etc/chart one.svg")
    assert artifact.content_type == "image/svg+xml"
    assert artifact.file.name.endswith(f"/{artifact.pk}/chart_one.svg")


def test_a_tool_context_links_the_running_turn(session):
    run = session.runs.get()
    ctx = ToolContext(session, run.pk, "toolu_1")
    artifact = save_artifact(ctx, "out.txt", b"from a tool")
    assert artifact.run_id == run.pk and artifact.session_id == session.pk


@pytest.mark.django_db(transaction=True)
async def test_async_tools_use_asave_artifact(session):
    from channels.db import database_sync_to_async

    run_id = await database_sync_to_async(lambda: session.runs.get().pk)()
    artifact = await asave_artifact(ToolContext(session, run_id), "async.txt", b"ok")
    assert artifact.run_id == run_id
    assert await database_sync_to_async(read_artifact)(session, "async.txt") == b"ok"


def test_same_key_replaces_and_deletes_the_old_file(session, storage,
                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = save_artifact(session, "out.txt", b"one")
    with django_capture_on_commit_callbacks(execute=True):
        second = save_artifact(session, "out.txt", b"two")
    assert Artifact.objects.filter(session_id=session.pk).get() == second
    assert stored_files(storage) == {second.file.name}
    assert not default_storage.exists(first.file.name)
    assert read_artifact(session, "out.txt") == b"two"


def test_replace_false_refuses_and_leaves_no_stray_file(session, storage):
    kept = save_artifact(session, "out.txt", b"one")
    with pytest.raises(FileExistsError):
        save_artifact(session, "out.txt", b"two", replace=False)
    assert stored_files(storage) == {kept.file.name}
    assert read_artifact(session, "out.txt") == b"one"


def test_delete_artifact_removes_the_file_on_commit_only(session, storage,
                                                         django_capture_on_commit_callbacks):
    artifact = save_artifact(session, "out.txt", b"one")
    with pytest.raises(RuntimeError):  # a rolled back delete keeps row and file
        with transaction.atomic():
            delete_artifact(session, "out.txt")
            raise RuntimeError
    assert default_storage.exists(artifact.file.name)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert delete_artifact(session, "out.txt") is True
        assert default_storage.exists(artifact.file.name)  # not before the commit
    assert len(callbacks) == 1
    assert not default_storage.exists(artifact.file.name)
    assert delete_artifact(session, "out.txt") is False
    with pytest.raises(Artifact.DoesNotExist):
        get_artifact(session, "out.txt")


@pytest.mark.parametrize("how", ["instance", "queryset"])
def test_deleting_sessions_deletes_their_files(scripted, user, storage, how,
                                               django_capture_on_commit_callbacks):
    scripted.enqueue("a", "b", "c")
    chat = ChatAgent.objects.start_session("x", instruction_args={"company_name": "A"})
    plain = PlainAgent.objects.start_session("y")
    other = PlainAgent.objects.start_session("z")
    for s in (chat, plain, other):
        save_artifact(s, "one.txt", b"1", run=s.runs.get())
        save_artifact(s, "two.txt", b"2")
    kept = set(Artifact.objects.filter(session_id=other.pk).values_list("file", flat=True))

    with django_capture_on_commit_callbacks(execute=True):
        if how == "instance":
            chat.delete()
            plain.delete()
        else:
            ChatAgent.objects.filter(pk=chat.pk).delete()
            PlainAgent.objects.filter(pk=plain.pk).delete()

    assert stored_files(storage) == kept
    assert set(Artifact.objects.values_list("session_id", flat=True)) == {other.pk}


def test_deleting_a_run_keeps_its_artifacts(session):
    run = session.runs.get()
    artifact = save_artifact(session, "out.txt", b"one", run=run)
    AgentRun.objects.filter(pk=run.pk).delete()
    artifact.refresh_from_db()
    assert artifact.run_id is None and read_artifact(session, "out.txt") == b"one"


def test_rejects_bad_arguments(session):
    with pytest.raises(ValueError):
        save_artifact(session, "", b"x")
    with pytest.raises(TypeError):
        save_artifact(object(), "k", b"x")
    with pytest.raises(TypeError):
        save_artifact(session, "k", 12)


@pytest.mark.django_db
def test_artifact_storage_setting_is_read_late(tmp_path, settings):
    """AGENT_SESSION["ARTIFACT_STORAGE"] names a STORAGES alias and may change at runtime."""

    from django_agent_session.artifacts import save_artifact
    from django_agent_session.models import Artifact
    from tests.testapp.models import ChatAgent

    storages = {**settings.STORAGES, "agent": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "agent")}}}
    session = ChatAgent.objects.create()
    with override_settings(STORAGES=storages, AGENT_SESSION={"ARTIFACT_STORAGE": "agent"}):
        artifact = save_artifact(session, "report.txt", b"hello")
        assert (tmp_path / "agent" / artifact.file.name).read_bytes() == b"hello"
        assert Artifact.objects.get(pk=artifact.pk).file.read() == b"hello"
