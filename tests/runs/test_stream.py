"""Publishing a run to its viewers: one encoding per frame, deltas merged while the layer is
busy, every frame in order, numbered and buffered."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer
from django.utils import timezone

from django_agent_session.runs.stream import (
    RunStream,
    buffer_for,
    frame_message,
    frame_of,
    group_name,
    merged,
)
from django_agent_session.contrib.redis_layer import RedisChannelLayer
from django_agent_session.store.turns import Turn
from tests.helpers.redis import executed
from tests.helpers.redis import layer as redis_layer
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db


def delta(text: str, index: int = 0, kind: str = "text", iteration: int = 1) -> dict:
    return {"kind": kind, "index": index, "text": text, "iteration": iteration}


class TestMerged:
    def test_consecutive_deltas_of_one_block_become_one(self):
        assert merged([delta("Hel"), delta("lo"), delta(" you")]) == [delta("Hello you")]

    def test_another_block_kind_or_iteration_starts_a_new_delta(self):
        deltas = [delta("a"), delta("b", index=1), delta("c", index=1, kind="thinking"),
                  delta("d", index=1, kind="thinking", iteration=2), delta("e", index=1,
                                                                          kind="thinking",
                                                                          iteration=2)]
        assert merged(deltas) == [delta("a"), delta("b", index=1),
                                  delta("c", index=1, kind="thinking"),
                                  delta("de", index=1, kind="thinking", iteration=2)]


def test_a_frame_message_carries_the_frame_encoded_once():
    frame = {"type": "delta", "run_id": "r1", "n": 3, "kind": "text", "text": "café"}
    message = frame_message(frame)
    assert message["type"] == "live.frame"
    assert (message["kind"], message["run_id"], message["n"]) == ("delta", "r1", 3)
    assert isinstance(message["text"], str) and "frame" not in message
    assert frame_of(message) == frame
    assert frame_of({"type": "live.frame", "frame": frame}) == frame  # from an older version


@pytest.fixture
def turn():
    session = ChatAgent.objects.create(context={})
    now = timezone.now()
    return Turn(session, uuid.uuid4(), now, now + timedelta(seconds=60), {"message": "hi"},
                [{"type": "text", "text": "hi"}], origin={"ref": "m1"})


async def received(layer, channel, count):
    return [frame_of(await layer.receive(channel)) for _ in range(count)]


async def test_deltas_that_arrive_while_one_is_published_are_merged_in_order(turn):
    layer = InMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add(group_name(ChatAgent, turn.session.pk), channel)
    stream = RunStream(ChatAgent, turn, layer)

    for word in ("The ", "model ", "is ", "fast."):  # no await yields between them
        await stream.on_progress("delta", delta(word))
    await stream.on_progress("tool.call", {"name": "lookup", "input": {}})  # after them
    await stream.on_progress("delta", delta("Done", index=1))
    await stream.flush()

    frames = await received(layer, channel, 3)
    assert [(f["type"], f["n"]) for f in frames] == [("delta", 1), ("tool.call", 2),
                                                     ("delta", 3)]
    assert frames[0]["text"] == "The model is fast." and frames[2]["text"] == "Done"
    assert all(f["run_id"] == str(turn.run_id) and f["ref"] == "m1" for f in frames)
    assert await buffer_for(layer).read(str(turn.run_id)) == frames  # late viewers catch up
    assert turn.progress_frames == 3  # what a pause records


async def test_finished_sends_the_outcome_after_every_pending_delta(turn):
    layer = InMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add(group_name(ChatAgent, turn.session.pk), channel)
    stream = RunStream(ChatAgent, turn, layer)

    await stream.on_progress("delta", delta("partial"))
    await stream.finished(None, RuntimeError("boom"))

    first, last = await received(layer, channel, 2)
    assert first["type"] == "delta" and first["text"] == "partial"
    assert last["type"] == "run.status" and last["status"] == "failed"


# -- on Redis -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", [RedisChannelLayer, ChannelsRedisLayer],
                         ids=["this library's layer", "channels-redis"])
async def test_frames_are_buffered_in_redis_and_sent(turn, backend, monkeypatch):
    """With this library's layer a frame is buffered and sent in one round trip, the buffer's
    commands ahead of the group read; with channels-redis' own, buffered, then sent."""
    layer = redis_layer(backend)
    channel = await layer.new_channel()
    await layer.group_add(group_name(ChatAgent, turn.session.pk), channel)
    stream = RunStream(ChatAgent, turn, layer)
    trips = executed(monkeypatch)
    try:
        await stream.on_progress("tool.call", {"name": "lookup", "input": {}})
        await stream.on_progress("tool.result", {"name": "lookup", "content": "ok"})
        frames = await received(layer, channel, 2)
        assert [(f["type"], f["n"]) for f in frames] == [("tool.call", 1), ("tool.result", 2)]
        assert await buffer_for(layer).read(str(turn.run_id)) == frames
        if backend is RedisChannelLayer:
            assert [names for _, names in trips] == [
                ["XADD", "EXPIRE", "ZREMRANGEBYSCORE", "ZRANGE"]] * 2
        else:
            assert [names for _, names in trips][0] == ["XADD", "EXPIRE"]
    finally:
        await layer.flush()


async def test_a_frame_the_buffer_refuses_still_reaches_the_viewers(turn, caplog):
    layer = redis_layer()
    channel = await layer.new_channel()
    await layer.group_add(group_name(ChatAgent, turn.session.pk), channel)
    stream = RunStream(ChatAgent, turn, layer)
    key = buffer_for(layer)._key(str(turn.run_id))
    await layer.connection(0).set(key, "not a stream")
    try:
        await stream.on_progress("tool.call", {"name": "lookup", "input": {}})
        [frame] = await received(layer, channel, 1)
        assert (frame["type"], frame["n"]) == ("tool.call", 1)
        assert f"Could not buffer a frame of run {turn.run_id}" in caplog.text
    finally:
        await layer.connection(0).delete(key)
        await layer.flush()


async def test_a_frame_appended_twice_is_read_once(turn):
    """redis-py retries a pipeline whose connection broke, which may append a frame twice."""
    layer = redis_layer()
    buffer = buffer_for(layer)
    run_id = str(turn.run_id)
    frames = [{"type": "delta", "run_id": run_id, "n": n, "text": str(n)} for n in (1, 2)]
    try:
        for frame in (frames[0], frames[0], frames[1], frames[1]):
            await buffer.append(run_id, frame)
        assert await buffer.read(run_id) == frames
    finally:
        await layer.flush()


async def test_a_frame_that_cannot_be_encoded_is_logged_not_raised(turn, caplog):
    layer = redis_layer()
    stream = RunStream(ChatAgent, turn, layer)
    try:
        await stream.on_progress("tool.call", {"name": "lookup", "input": object()})
        assert "Could not fan out 'tool.call'" in caplog.text
        await stream.on_progress("tool.call", {"name": "lookup", "input": {}})  # goes on
        assert [f["n"] for f in await buffer_for(layer).read(str(turn.run_id))] == [2]
    finally:
        await layer.flush()
