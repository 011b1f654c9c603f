"""Export and import of a session: one JSON document that round-trips exactly."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.core.files.storage import default_storage

from django_agent_session import exceptions as exc
from django_agent_session.artifacts import read_artifact, save_artifact
from django_agent_session.export import SCHEMA_VERSION, export_session, import_session
from django_agent_session.models import AgentEvent, AgentRun, Artifact, EventType
from django_agent_session.testing import text_reply, tool_reply
from tests.testapp.models import ChatAgent, Order, PlainAgent, ToolAgent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def storage(tmp_storage):
    return tmp_storage


@pytest.fixture
def tool_session(scripted, user):
    """A session with a tool call, two turns, metadata, and two artifacts."""
    Order.objects.create(number=7, status="shipped", customer="Ann")
    scripted.enqueue(
        tool_reply("lookup_order", {"number": 7}, id="toolu_1", text="Let me check."),
        text_reply("Order 7 has shipped."),
        text_reply("You're welcome, café included."),
    )
    session = ToolAgent.objects.start_session(
        "Where is order 7?", instruction_args={"company_name": "Acme"}, owner=user)
    session = ToolAgent.objects.continue_session(session, "Thanks!")
    ToolAgent.objects.filter(pk=session.pk).update(
        metadata={"tags": ["vip", "orders"], "tenant": "acme"}, pinned=True)
    session.refresh_from_db()
    run = session.runs.order_by("started_at").first()
    save_artifact(session, "reports/order-7.txt", b"order 7: shipped\n", run=run,
                  metadata={"pages": 1})
    save_artifact(session, "raw.bin", bytes(range(256)))
    return session


def without_ids(doc: dict[str, Any], *ids: str) -> Any:
    """The document with every occurrence of the given ids replaced by placeholders."""
    text = json.dumps(doc, sort_keys=True)
    for i, value in enumerate(ids):
        text = text.replace(value, f"<id{i}>")
    return json.loads(text)


def ids_of(doc: dict[str, Any]) -> list[str]:
    return [doc["session"]["id"], *(r["id"] for r in doc["runs"]),
            *(a["id"] for a in doc["artifacts"])]


def test_export_is_plain_json_with_everything(tool_session):
    doc = export_session(tool_session, include_files=True)

    assert json.loads(json.dumps(doc)) == doc
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["model"] == "testapp.toolagent"
    assert doc["session"]["id"] == str(tool_session.pk)
    assert doc["session"]["metadata"] == {"tags": ["vip", "orders"], "tenant": "acme"}
    assert doc["session"]["pinned"] is True
    assert doc["session"]["turn_count"] == 2
    assert doc["session"]["created_at"] == tool_session.created_at.isoformat()
    assert doc["context"]["turns"] == 2
    messages = doc["context"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant",
                                             "user", "assistant"]
    assert messages[2]["content"][0]["type"] == "tool_result"
    assert [r["status"] for r in doc["runs"]] == ["completed", "completed"]
    seqs = [e["seq"] for e in doc["events"]]
    assert seqs == list(range(1, len(seqs) + 1)) and seqs[-1] == doc["session"]["event_seq"]
    assert {EventType.TOOL_CALL, EventType.TOOL_RESULT} <= {e["type"] for e in doc["events"]}
    report = next(a for a in doc["artifacts"] if a["key"] == "reports/order-7.txt")
    assert report["run"] == doc["runs"][0]["id"]
    assert report["size"] == 17 and report["content_type"] == "text/plain"
    assert base64.b64decode(report["content"]) == b"order 7: shipped\n"
    assert report["metadata"] == {"pages": 1}


def test_files_are_left_out_unless_asked(tool_session):
    doc = export_session(tool_session)
    assert all("content" not in a for a in doc["artifacts"])
    assert all(a["checksum"] and a["file"] for a in doc["artifacts"])


def test_round_trip_under_new_ids_is_exact(tool_session, user):
    doc = export_session(tool_session, include_files=True)

    imported = import_session(json.loads(json.dumps(doc)))

    assert imported.pk != tool_session.pk
    again = export_session(imported, include_files=True)
    assert again["session"]["id"] == str(imported.pk)
    assert set(ids_of(again)).isdisjoint(ids_of(doc))
    assert without_ids(again, *ids_of(again)) == without_ids(doc, *ids_of(doc))
    # run ids inside event data were remapped with the run rows
    new_run_ids = {r["id"] for r in again["runs"]}
    assert {e["data"]["run_id"] for e in again["events"] if "run_id" in e["data"]} <= new_run_ids
    assert imported.owner_id == user.pk
    # the files are copies, not shared: deleting the original leaves the import's intact
    names = {a.file.name for a in Artifact.objects.filter(session_id=imported.pk)}
    assert names.isdisjoint(a["file"] for a in doc["artifacts"])
    assert read_artifact(imported, "raw.bin") == bytes(range(256))


def test_round_trip_under_the_same_id_restores_the_same_document(
        tool_session, django_capture_on_commit_callbacks):
    doc = export_session(tool_session, include_files=True)
    pk = tool_session.pk
    with django_capture_on_commit_callbacks(execute=True):
        tool_session.delete()
    assert not AgentRun.objects.filter(session_id=pk).exists()
    assert not any(default_storage.exists(a["file"]) for a in doc["artifacts"])

    imported = import_session(doc, new_id=False)

    assert imported.pk == pk
    assert export_session(imported, include_files=True) == doc
    assert read_artifact(imported, "reports/order-7.txt") == b"order 7: shipped\n"


def test_imported_session_continues_with_fresh_event_seqs(tool_session, scripted):
    doc = export_session(tool_session, include_files=True)
    imported = import_session(doc)
    last = doc["session"]["event_seq"]

    scripted.enqueue("Anything else?")
    imported = ToolAgent.objects.continue_session(imported, "One more thing")

    request = scripted.requests[-1]
    assert request.messages[:-1] == doc["context"]["messages"]
    seqs = list(AgentEvent.objects.filter(session_id=imported.pk).values_list("seq", flat=True))
    assert seqs == list(range(1, last + len(seqs) - len(doc["events"]) + 1))
    assert imported.turn_count == 3


def test_import_without_contents_copies_files_still_in_storage(tool_session):
    doc = export_session(tool_session)
    imported = import_session(doc)
    assert read_artifact(imported, "raw.bin") == bytes(range(256))
    names = set(Artifact.objects.filter(session_id=imported.pk).values_list("file", flat=True))
    assert names.isdisjoint(a["file"] for a in doc["artifacts"])


def test_import_without_contents_keeps_metadata_when_the_file_is_gone(tool_session):
    doc = export_session(tool_session)
    for artifact in doc["artifacts"]:
        default_storage.delete(artifact["file"])
    imported = import_session(doc)
    restored = Artifact.objects.get(session_id=imported.pk, key="raw.bin")
    assert restored.file.name == "" and restored.size == 256 and restored.checksum


def test_import_into_another_model_and_owner(tool_session, other_user):
    doc = export_session(tool_session, include_files=True)
    imported = import_session(doc, model=ChatAgent, owner=other_user)
    assert isinstance(imported, ChatAgent) and imported.owner_id == other_user.pk
    assert imported.get_context().messages == doc["context"]["messages"]
    assert imported.runs.count() == 2 and imported.artifacts.count() == 2


def test_custom_context_field_and_missing_owner(scripted, user):
    scripted.enqueue("Hi.")
    session = PlainAgent.objects.start_session("Hello", owner=user)
    doc = export_session(session)
    assert doc["context"]["messages"][0]["content"][0]["text"] == "Hello"
    doc["session"]["owner"] = 999_999  # a user that does not exist here
    imported = import_session(doc)
    assert imported.owner_id is None
    assert PlainAgent.objects.get(pk=imported.pk).state == doc["context"]


def test_running_session_imports_as_idle(tool_session):
    doc = export_session(tool_session)
    doc["session"]["status"] = "running"
    assert import_session(doc).status == "idle"


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(schema_version=99), "schema_version"),
    (lambda d: d.update(model="auth.user"), "model"),
    (lambda d: d.update(model="nope.nothing"), "model"),
    (lambda d: d.update(events=None), "events"),
    (lambda d: d["artifacts"][0].update(content=base64.b64encode(b"tampered").decode()),
     "artifacts"),
])
def test_invalid_documents_are_rejected_without_side_effects(tool_session, change, field):
    doc = export_session(tool_session, include_files=True)
    change(doc)
    before = ToolAgent.objects.count(), AgentRun.objects.count(), Artifact.objects.count()
    with pytest.raises(exc.InvalidInput) as info:
        import_session(doc)
    assert field in info.value.errors
    assert (ToolAgent.objects.count(), AgentRun.objects.count(),
            Artifact.objects.count()) == before


def test_same_id_import_refuses_an_existing_session(tool_session):
    with pytest.raises(exc.InvalidInput) as info:
        import_session(export_session(tool_session), new_id=False)
    assert "id" in info.value.errors


def test_import_repairs_a_dangling_tool_use_anywhere_in_the_history(tool_session):
    """Loading repairs only a history's tail, so an imported history, which may come from
    anywhere, is repaired in full when it is imported."""
    doc = export_session(tool_session)
    messages = doc["context"]["messages"]
    assert messages[1]["content"][-1]["type"] == "tool_use"
    messages[2]["content"] = [{"type": "text", "text": "a result lost by hand"}]
    imported = import_session(doc)
    repaired = imported.get_context().messages[2]["content"]
    assert repaired[0] == {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                           "content": "Tool call interrupted before it returned a result."}
    assert repaired[1] == {"type": "text", "text": "a result lost by hand"}


def test_runs_keep_their_kind_stop_reason_cost_and_origin(tool_session):
    from decimal import Decimal

    from django_agent_session.models import AgentRun

    first = tool_session.runs.order_by("started_at").first()
    AgentRun.objects.filter(pk=first.pk).update(cost=Decimal("0.012345"))
    doc = export_session(tool_session)
    assert [(r["kind"], r["stop_reason"]) for r in doc["runs"]] == [
        ("turn", "end_turn"), ("turn", "end_turn")]
    assert doc["runs"][0]["cost"] == "0.012345"
    assert doc["runs"][0]["origin"] == first.origin

    imported = import_session(doc)
    restored = imported.runs.order_by("started_at").first()
    assert (restored.kind, restored.stop_reason, restored.cost) == (
        "turn", "end_turn", Decimal("0.012345"))

    # a document written before these were exported imports with their defaults
    for run in doc["runs"]:
        for name in ("kind", "stop_reason", "cost", "origin"):
            del run[name]
    older = import_session(doc)
    assert {(r.kind, r.stop_reason, r.cost) for r in older.runs.all()} == {("turn", "", None)}
