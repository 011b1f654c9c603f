"""AG-UI events (``?protocol=ag-ui``), read by CopilotKit and other AG-UI clients.

Unnamed SSE frames, ``data: {event}``, each an event of the AG-UI protocol 1.0 (the
``ag-ui-protocol`` package's types validate them; this module writes plain JSON and does not
need the package). The conversation is the thread (``threadId``: the session's id), a run is a
run (``runId``). Every stream opens with ``RUN_STARTED`` and ends with ``RUN_FINISHED`` or
``RUN_ERROR``; messages and tool calls are strictly nested (one is ended before the next
starts), as AG-UI clients verify.

* ``delta`` text: ``TEXT_MESSAGE_START`` (``messageId`` ``<run>-<iteration>-<block>``),
  ``TEXT_MESSAGE_CONTENT``, ``TEXT_MESSAGE_END``; thinking: ``REASONING_START``,
  ``REASONING_MESSAGE_START``/``CONTENT``/``END``, ``REASONING_END``. A tool's input deltas
  are not sent (no call id yet); the input arrives whole with the call.
* ``tool.call``: ``TOOL_CALL_START`` (its ``parentMessageId``: the text of the same model
  response), one ``TOOL_CALL_ARGS`` (the input as JSON), ``TOOL_CALL_END``; ``tool.result``:
  ``TOOL_CALL_RESULT`` (``metadata.isError`` when it is an error result).
* ``tool.approval_requested``, ``budget.warning``, ``context.compacted``: ``CUSTOM`` (``name``:
  our event's name, ``value``: its data).
* ``message``: ``RUN_FINISHED`` with ``result`` (the turn's output); a turn that paused for
  approvals has the ``interrupt`` outcome, one interrupt per pending call (``id`` and
  ``toolCallId``: the call's id, ``reason: "tool_approval"``).
* ``error``: ``RUN_ERROR`` (``message``: the detail, ``code``, ``rawEvent``: our error body);
  a cancelled run is ``RUN_FINISHED`` with the ``cancelled`` outcome.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import StreamProtocol, data_frames, dumps

#: a turn body's status when it paused for approvals
AWAITING_APPROVAL = "awaiting_approval"


class AGUIStream(StreamProtocol):
    """One response's AG-UI events."""

    name: ClassVar[str] = "ag-ui"

    def __init__(self, **ids: Any) -> None:
        super().__init__(**ids)
        self.started = self.ended = False
        #: the open block: (kind, messageId)
        self.block: tuple[str, str] | None = None
        #: the text message of the current model response (the parent of its tool calls)
        self.parent: str | None = None
        self.iteration: Any = None
        #: approvals requested in this response, when a turn body does not list them
        self.requested: list[dict[str, Any]] = []

    def event(self, name: str, data: Any, id: int | None = None) -> bytes:
        events: list[dict[str, Any]] = []
        if self.ended:  # nothing follows the end of a run
            return data_frames(events, id)
        if name == "run.started":
            self.bind(run_id=data.get("run_id"))
        if name == "message" and self.thread_id is None and isinstance(data.get("session"), dict):
            self.bind(thread_id=data["session"].get("id"))
        if not self.started and (name != "error" or self.run_id is not None):
            # an error before any run (e.g. a busy session) is a RUN_ERROR of its own
            self.started = True
            events.append({"type": "RUN_STARTED", **self.ids()})
        handler = getattr(self, "on_" + name.replace(".", "_"), None)
        if handler is not None:
            handler(events, data)
        elif name != "run.started":
            self.end_block(events)
            events.append({"type": "CUSTOM", "name": name, "value": data})
        return data_frames(events, id)

    def ids(self) -> dict[str, str]:
        return {"threadId": self.thread_id or self.run_id or "", "runId": self.run_id or ""}

    def on_delta(self, events: list[dict[str, Any]], data: dict[str, Any]) -> None:
        kind = data.get("kind")
        if kind not in ("text", "thinking"):  # tool input: no call id yet
            return
        iteration = data.get("iteration")
        if iteration != self.iteration:
            self.iteration, self.parent = iteration, None  # a new model response
        message_id = f"{self.run_id}-{iteration}-{data.get('index', 0)}"
        if self.block != (kind, message_id):
            self.end_block(events)
            self.block = (kind, message_id)
            if kind == "text":
                self.parent = message_id
                events.append({"type": "TEXT_MESSAGE_START", "messageId": message_id,
                               "role": "assistant"})
            else:
                events += [{"type": "REASONING_START", "messageId": message_id},
                           {"type": "REASONING_MESSAGE_START", "messageId": message_id,
                            "role": "reasoning"}]
        events.append({"type": "TEXT_MESSAGE_CONTENT" if kind == "text"
                       else "REASONING_MESSAGE_CONTENT",
                       "messageId": message_id, "delta": data.get("text") or ""})

    def on_tool_call(self, events: list[dict[str, Any]], data: dict[str, Any]) -> None:
        self.end_block(events)
        call_id = data["id"]
        start = {"type": "TOOL_CALL_START", "toolCallId": call_id, "toolCallName": data["name"]}
        if self.parent is not None:
            start["parentMessageId"] = self.parent
        events += [start,
                   {"type": "TOOL_CALL_ARGS", "toolCallId": call_id,
                    "delta": dumps(data.get("input", {}))},
                   {"type": "TOOL_CALL_END", "toolCallId": call_id}]

    def on_tool_result(self, events: list[dict[str, Any]], data: dict[str, Any]) -> None:
        self.end_block(events)
        content = data.get("content")
        result = {"type": "TOOL_CALL_RESULT", "messageId": f"{data['id']}-result",
                  "toolCallId": data["id"], "role": "tool",
                  "content": content if isinstance(content, str) else dumps(content)}
        if data.get("is_error"):
            result["metadata"] = {"isError": True}
        events.append(result)

    def on_tool_approval_requested(self, events: list[dict[str, Any]],
                                   data: dict[str, Any]) -> None:
        self.end_block(events)
        self.requested.append(data)
        events.append({"type": "CUSTOM", "name": "tool.approval_requested", "value": data})

    def on_message(self, events: list[dict[str, Any]], data: dict[str, Any]) -> None:
        self.end_block(events)
        finished: dict[str, Any] = {"type": "RUN_FINISHED", **self.ids()}
        if data.get("output") is not None:  # none while it waits for approvals
            finished["result"] = data["output"]
        calls = data.get("pending") or self.requested
        if data.get("status") == AWAITING_APPROVAL and calls:
            finished["outcome"] = {"type": "interrupt",
                                   "interrupts": [interrupt(call) for call in calls]}
        else:
            finished["outcome"] = {"type": "success"}
        events.append(finished)
        self.ended = True

    def on_error(self, events: list[dict[str, Any]], data: dict[str, Any]) -> None:
        self.end_block(events)
        if data.get("code") == "cancelled" and self.started:
            events.append({"type": "RUN_FINISHED", **self.ids(),
                           "outcome": {"type": "cancelled"}})
        else:
            error = {"type": "RUN_ERROR",
                     "message": str(data.get("detail") or "The turn failed."), "rawEvent": data}
            if data.get("code"):
                error["code"] = str(data["code"])
            events.append(error)
        self.ended = True

    def end_block(self, events: list[dict[str, Any]]) -> None:
        if self.block is None:
            return
        kind, message_id = self.block
        self.block = None
        if kind == "text":
            events.append({"type": "TEXT_MESSAGE_END", "messageId": message_id})
        else:
            events += [{"type": "REASONING_MESSAGE_END", "messageId": message_id},
                       {"type": "REASONING_END", "messageId": message_id}]


def interrupt(call: dict[str, Any]) -> dict[str, Any]:
    """The AG-UI interrupt of a pending call (``{tool_use_id, name, input, expires_at?}``)."""
    found = {"id": call["tool_use_id"], "reason": "tool_approval",
             "toolCallId": call["tool_use_id"],
             "message": f"Approve the call of {call.get('name')}?",
             "metadata": {"name": call.get("name"), "input": call.get("input")}}
    if call.get("expires_at"):
        found["expiresAt"] = str(call["expires_at"])
    return found
