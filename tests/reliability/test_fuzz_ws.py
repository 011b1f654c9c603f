"""Property-based fuzzing of the WebSocket protocol: a bad frame gets an error, never a close,
and never changes anything stored.

Each example opens a logged-in socket on an existing conversation and sends a batch of frames:
text that is not JSON, JSON that is not an object, objects of known and unknown types with
arbitrary fields, binary frames, frames nested too deeply and frames over the size limit. After
every frame a ``ping`` with a fresh ``ref`` must be answered by its ``pong`` (the socket is
still open and still serving). A frame the protocol rejects is answered with an ``error`` frame
and changes nothing stored; so does every other frame except a valid ``message`` (which runs a
turn; the test waits for it to finish).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from django_agent_session.conf import agent_settings
from django_agent_session.live import protocol
from django_agent_session.testing import text_reply
from tests.helpers.live_server import (
    communicator,
    create_chat,
)
from tests.helpers.state import snapshot
from tests.testapp.models import ChatAgent

from .strategies import INPUTS, INSTRUCTION_ARGS, JSON, TEXT

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_layer")]

EXAMPLES = 220
KNOWN = sorted(protocol.CLIENT_FRAMES)
FIELDS = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(KNOWN), TEXT, JSON)},
    optional={"input": INPUTS, "ref": st.one_of(TEXT, JSON), "after_seq": JSON,
              "instruction_args": INSTRUCTION_ARGS, "title": JSON, "extra": JSON})
FRAMES = st.one_of(
    FIELDS.map(json.dumps),                       # objects shaped like real frames
    JSON.map(json.dumps),                         # any JSON value
    st.text(max_size=40),                         # mostly not JSON at all
    st.binary(max_size=40),                       # binary frames
    st.sampled_from([
        "[" * 50_000, '{"type": "ping", "ref": ' * 3000,
        json.dumps({"type": "message", "input": "x" * (300 * 1024)}),
        '{"type": "message", "input": {"message": "\\ud800"}}',
        '{"type": "resume", "after_seq": 1e308}', '{"type": "resume", "after_seq": -1}',
        '{"type": "message", "input": "hi", "ref": "' + "r" * 100 + '"}',
        '{"type": "message", "input": "a valid turn among bad frames", "ref": "fuzz-turn"}',
    ]),
)


def classify(frame: str | bytes) -> tuple[str | None, str | None]:
    """(error code the protocol must answer with, or ``None``; kind of a valid frame)."""
    text, data = (None, frame) if isinstance(frame, bytes) else (frame, None)
    try:
        kind, fields = protocol.parse(protocol.decode(text, data,
                                                      agent_settings.MAX_FRAME_BYTES))
    except protocol.FrameError as error:
        return error.code, None
    if kind == "message":
        try:
            ChatAgent.objects.validate_input(fields["input"])
        except Exception:  # noqa: BLE001 (rejected input: an error frame, no turn)
            return "invalid_input", "message"
        return None, "turn"
    return None, kind


async def answered(comm: Any, ref: str) -> list[dict[str, Any]]:
    """Send a ping; every frame up to its pong (fails if the socket closes meanwhile)."""
    await comm.send_json_to({"type": "ping", "ref": ref})
    frames = []
    while True:
        frame = await comm.receive_json_from(timeout=10)
        frames.append(frame)
        if frame == {"type": "pong", "ref": ref}:
            return frames


async def finished_turn(comm: Any, frames: list[dict[str, Any]]) -> bool:
    """Wait for the turn a valid message started; False if its ``ref`` named an earlier
    message (acknowledged as a duplicate: nothing runs)."""
    (ack,) = [f for f in frames if f.get("type") == "ack"]
    if ack["duplicate"]:
        return False

    def done(f: dict[str, Any]) -> bool:
        return (f.get("type") == "run.status" and f.get("run_id") == ack["run_id"]
                and f.get("status") in ("completed", "failed"))
    while not any(done(f) for f in frames):
        frames.append(await comm.receive_json_from(timeout=10))
    return True


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(batch=st.lists(FRAMES, min_size=1, max_size=6))
async def test_bad_frames_get_errors_not_closes(user, scripted, batch):
    scripted.default = text_reply("ok", usage={"input_tokens": 0, "output_tokens": 0})
    session = await database_sync_to_async(
        lambda: ChatAgent._base_manager.filter(owner=user).first())()
    if session is None:
        session = await create_chat(user)
    comm = await communicator(user, session.pk)
    connected, _ = await comm.connect(timeout=10)
    assert connected
    try:
        state = await comm.receive_json_from(timeout=10)
        assert state["type"] == "session.state"
        for i, frame in enumerate(batch):
            expected_error, kind = classify(frame)
            event(f"error: {expected_error}" if expected_error else f"valid: {kind}")
            before = await database_sync_to_async(snapshot)()
            key = "bytes" if isinstance(frame, bytes) else "text"  # empty frames too
            await comm.send_input({"type": "websocket.receive", key: frame})
            frames = await answered(comm, f"sentinel-{i}")
            errors = [f for f in frames if f.get("type") == "error"]
            assert not [e for e in errors if e["code"] == protocol.INTERNAL_ERROR], errors
            if expected_error is not None:
                assert expected_error in {e["code"] for e in errors}, (frame[:200], frames)
            if not (kind == "turn" and await finished_turn(comm, frames)):
                assert await database_sync_to_async(snapshot)() == before, frame[:200]
    finally:
        await comm.disconnect()
