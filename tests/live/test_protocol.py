"""Client frames: validated by serializers whose declared fields are copied shallowly."""

from __future__ import annotations

import pytest

from django_agent_session.live.protocol import CLIENT_FRAMES, FrameError, parse


def test_a_frame_is_validated_into_its_fields() -> None:
    assert parse({"type": "message", "input": "hi", "ref": "m1"}) == (
        "message", {"input": "hi", "ref": "m1"})
    assert parse({"type": "decide", "tool_use_id": "toolu_1", "approve": False,
                  "reason": "no"}) == (
        "decide", {"tool_use_id": "toolu_1", "approve": False, "reason": "no"})


def test_each_validation_binds_its_own_fields_and_leaves_the_declared_ones_alone() -> None:
    with pytest.raises(FrameError) as caught:
        parse({"type": "decide", "tool_use_id": "t", "approve": True, "reason": "x", "n": 1})
    assert caught.value.errors == {"reason": ["Only a rejection takes a reason."],
                                   "n": ["Unknown field."]}
    # the next frame of the same type is judged on its own, with nothing left of the last
    assert parse({"type": "decide", "tool_use_id": "t", "approve": True})[1] == {
        "tool_use_id": "t", "approve": True}
    for serializer_class in CLIENT_FRAMES.values():
        for name, field in serializer_class._declared_fields.items():
            assert field.parent is None and field.field_name is None, (serializer_class, name)


def test_the_fields_limits_still_hold() -> None:
    with pytest.raises(FrameError) as caught:
        parse({"type": "message", "input": "hi", "ref": "r" * 10_000})
    assert list(caught.value.errors) == ["ref"]
    with pytest.raises(FrameError) as caught:
        parse({"type": "resume", "after_seq": -1})
    assert list(caught.value.errors) == ["after_seq"]
