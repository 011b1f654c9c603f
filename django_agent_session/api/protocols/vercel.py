"""The Vercel AI SDK's UI message stream (``?protocol=ai-sdk``), read by ``useChat``.

Unnamed SSE frames, ``data: {chunk}``, ending with ``data: [DONE]``, under the header
``x-vercel-ai-ui-message-stream: v1``; the chunk types are those of the ``ai`` package's
``uiMessageChunkSchema`` (AI SDK 6; ``tool-approval-request`` is new in 6). One run is one
assistant message (``messageId`` is the run's id, so a stream that goes on after a pause or a
reconnect continues the same message); each model call of the turn is a step.

Our events map as follows (docs/streaming-protocols.md has the table):

* ``delta`` text / thinking: ``text-start`` / ``reasoning-start`` when a block opens, then
  ``*-delta``; ``*-end`` when the next block, call or outcome comes. A tool's input deltas
  are not sent: they carry no call id, and the whole input arrives with ``tool.call``.
* ``tool.call``: ``tool-input-start`` + ``tool-input-available``; ``tool.result``:
  ``tool-output-available`` (``tool-output-error`` when ``is_error``);
  ``tool.approval_requested``: ``tool-approval-request`` (``approvalId`` = the call's id,
  which the approve/reject endpoints take).
* other progress (``budget.warning``, ``context.compacted``): transient ``data-*`` parts.
* ``message``: ``finish`` (``finishReason`` ``tool-calls`` when the turn paused for approvals,
  else ``stop``) with ``messageMetadata`` ``{session_id, run_id, status, output}``.
* ``error``: ``message-metadata`` ``{error: <error body>}`` then ``error`` (``errorText``: its
  ``detail``); a cancelled run is ``abort``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import StreamProtocol, data_frames

#: the statuses of a turn body that paused for approvals
AWAITING_APPROVAL = "awaiting_approval"


class AISDKStream(StreamProtocol):
    """One response's UI message stream."""

    name: ClassVar[str] = "ai-sdk"
    headers: ClassVar[dict[str, str]] = {"x-vercel-ai-ui-message-stream": "v1"}

    def __init__(self, **ids: Any) -> None:
        super().__init__(**ids)
        self.started = False
        self.step_open = False
        self.step_iteration: int | None = None  # of the open step (None: began with a tool)
        self.block: tuple[str, str] | None = None  # (kind, part id) of the open block

    # -- chunks ----------------------------------------------------------------------------

    def event(self, name: str, data: Any, id: int | None = None) -> bytes:
        parts: list[dict[str, Any]] = []
        if name == "run.started":
            self.bind(run_id=data.get("run_id"))
        if not self.started:
            self.started = True
            parts.append({"type": "start", **({"messageId": self.run_id} if self.run_id else {})})
        handler = getattr(self, "on_" + name.replace(".", "_"), None)
        if handler is not None:
            handler(parts, data)
        elif name != "run.started":  # our other progress: a notice, not part of the message
            parts.append({"type": "data-" + name.replace(".", "-").replace("_", "-"),
                          "data": data, "transient": True})
        return data_frames(parts, id)

    def close(self) -> bytes:
        return b"data: [DONE]\n\n"

    def on_delta(self, parts: list[dict[str, Any]], data: dict[str, Any]) -> None:
        kind = {"text": "text", "thinking": "reasoning"}.get(data.get("kind", ""))
        if kind is None:  # tool input: no call id yet (see the module docstring)
            return
        iteration = data.get("iteration")
        if self.step_open and self.step_iteration != iteration:
            self.finish_step(parts)  # the next model call
        self.start_step(parts, iteration)
        part_id = f"{kind}-{iteration}-{data.get('index', 0)}"
        if self.block != (kind, part_id):
            self.end_block(parts)
            self.block = (kind, part_id)
            parts.append({"type": f"{kind}-start", "id": part_id})
        parts.append({"type": f"{kind}-delta", "id": part_id, "delta": data.get("text") or ""})

    def on_tool_call(self, parts: list[dict[str, Any]], data: dict[str, Any]) -> None:
        self.end_block(parts)
        self.start_step(parts)
        call = {"toolCallId": data["id"], "toolName": data["name"]}
        parts += [{"type": "tool-input-start", **call},
                  {"type": "tool-input-available", **call, "input": data.get("input", {})}]

    def on_tool_result(self, parts: list[dict[str, Any]], data: dict[str, Any]) -> None:
        self.end_block(parts)
        self.start_step(parts)
        content = data.get("content")
        if data.get("is_error"):
            text = content if isinstance(content, str) else repr(content)
            parts.append({"type": "tool-output-error", "toolCallId": data["id"],
                          "errorText": text})
        else:
            parts.append({"type": "tool-output-available", "toolCallId": data["id"],
                          "output": content})

    def on_tool_approval_requested(self, parts: list[dict[str, Any]],
                                   data: dict[str, Any]) -> None:
        self.end_block(parts)
        self.start_step(parts)
        parts.append({"type": "tool-approval-request", "approvalId": data["tool_use_id"],
                      "toolCallId": data["tool_use_id"]})

    def on_message(self, parts: list[dict[str, Any]], data: dict[str, Any]) -> None:
        self.finish_step(parts)
        session = data.get("session")
        status = data.get("status")
        metadata = {"session_id": session.get("id") if isinstance(session, dict) else None,
                    "run_id": data.get("run_id") or self.run_id, "status": status,
                    "output": data.get("output")}
        parts.append({"type": "finish",
                      "finishReason": "tool-calls" if status == AWAITING_APPROVAL else "stop",
                      "messageMetadata": metadata})

    def on_error(self, parts: list[dict[str, Any]], data: dict[str, Any]) -> None:
        self.finish_step(parts)
        detail = str(data.get("detail") or data.get("code") or "The turn failed.")
        if data.get("code") == "cancelled":
            parts.append({"type": "abort", "reason": detail})
            return
        parts += [{"type": "message-metadata", "messageMetadata": {"error": data}},
                  {"type": "error", "errorText": detail}]

    # -- blocks and steps ------------------------------------------------------------------

    def start_step(self, parts: list[dict[str, Any]], iteration: int | None = None) -> None:
        if not self.step_open:
            self.step_open, self.step_iteration = True, iteration
            parts.append({"type": "start-step"})

    def end_block(self, parts: list[dict[str, Any]]) -> None:
        if self.block is not None:
            kind, part_id = self.block
            parts.append({"type": f"{kind}-end", "id": part_id})
            self.block = None

    def finish_step(self, parts: list[dict[str, Any]]) -> None:
        self.end_block(parts)
        if self.step_open:
            parts.append({"type": "finish-step"})
            self.step_open = False
