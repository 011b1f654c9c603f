"""The in-memory layer behaves as Channels' does, with its sweep for expired entries throttled."""

from __future__ import annotations

import asyncio

import pytest
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

from django_agent_session.contrib import memory_layer
from django_agent_session.contrib.memory_layer import InMemoryChannelLayer


async def test_a_sent_message_is_received_as_a_copy() -> None:
    layer = InMemoryChannelLayer()
    channel = await layer.new_channel()
    flat = {"type": "live.frame", "text": '{"a":1}', "n": 3, "run_id": None}
    nested = {"type": "live.state", "state": {"viewers": ["a"]}}
    await layer.send(channel, flat)
    await layer.send(channel, nested)
    flat["n"] = 4
    nested["state"]["viewers"].append("b")

    assert await layer.receive(channel) == {"type": "live.frame", "text": '{"a":1}', "n": 3,
                                            "run_id": None}
    assert await layer.receive(channel) == {"type": "live.state", "state": {"viewers": ["a"]}}
    assert layer.channels == {}  # an emptied channel is forgotten, as in Channels' layer


async def test_a_group_message_reaches_every_member_but_a_full_one() -> None:
    layer = InMemoryChannelLayer(capacity=2)
    members = [await layer.new_channel() for _ in range(3)]
    for channel in members:
        await layer.group_add("conversation", channel)
    await layer.send(members[0], {"type": "one"})
    await layer.send(members[0], {"type": "two"})
    with pytest.raises(ChannelFull):
        await layer.send(members[0], {"type": "three"})

    await layer.group_send("conversation", {"type": "live.frame", "text": "x"})

    assert [await layer.receive(members[0]) for _ in range(2)] == [{"type": "one"},
                                                                    {"type": "two"}]
    for channel in members[1:]:
        assert await layer.receive(channel) == {"type": "live.frame", "text": "x"}
    await layer.group_discard("conversation", members[1])
    await layer.group_send("conversation", {"type": "after"})
    assert await layer.receive(members[2]) == {"type": "after"}
    assert members[1] not in layer.channels


async def test_expired_messages_and_their_channels_memberships_are_dropped(monkeypatch) -> None:
    monkeypatch.setattr(memory_layer, "SWEEP_EVERY", 0.0)
    layer = InMemoryChannelLayer(expiry=0.05)
    stale, live = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("conversation", stale)
    await layer.group_add("conversation", live)
    await layer.send(stale, {"type": "old"})
    await asyncio.sleep(0.1)

    await layer.group_send("conversation", {"type": "new"})

    assert await layer.receive(live) == {"type": "new"}
    assert layer.groups["conversation"].keys() == {live}
    assert stale not in layer.channels


async def test_the_sweep_runs_at_most_once_a_second(monkeypatch) -> None:
    sweeps = []
    original = ChannelsInMemoryChannelLayer._clean_expired
    monkeypatch.setattr(ChannelsInMemoryChannelLayer, "_clean_expired",
                        lambda self: sweeps.append(1) or original(self))
    layer = InMemoryChannelLayer()
    channels = [await layer.new_channel() for _ in range(50)]
    for channel in channels:
        await layer.group_add("conversation", channel)
    for _ in range(20):
        await layer.group_send("conversation", {"type": "live.frame", "text": "x"})
        for channel in channels:
            await layer.receive(channel)
    assert len(sweeps) == 1  # Channels' layer: 20 * 51 sweeps of all 50 channels
