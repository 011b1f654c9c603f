"""Stream protocols: the run stream as this library's own events, or as a chat UI reads it.

``?protocol=`` on the streaming endpoints picks one: absent, the native events
(docs/rest.md); ``ai-sdk``, the Vercel AI SDK UI message stream (:mod:`.vercel`); ``ag-ui``,
AG-UI events (:mod:`.agui`). A query flag rather than ``Accept``: all three are
``text/event-stream``, and both clients let a project set the URL more easily than a media
type parameter.
"""

from __future__ import annotations

from rest_framework.exceptions import ValidationError

from .agui import AGUIStream
from .base import NativeStream, StreamProtocol, data_frames, sse
from .vercel import AISDKStream

__all__ = ["PROTOCOLS", "QUERY_PARAM", "AGUIStream", "AISDKStream", "NativeStream",
           "StreamProtocol", "data_frames", "protocol_for", "sse"]

#: the query parameter that picks the protocol
QUERY_PARAM = "protocol"
#: the protocols a client may ask for, by name
PROTOCOLS: dict[str, type[StreamProtocol]] = {
    AISDKStream.name: AISDKStream,
    AGUIStream.name: AGUIStream,
}


def protocol_for(value: str | None) -> type[StreamProtocol]:
    """The protocol named ``value`` (``None`` or empty: the native one); a 400 naming the
    known ones for any other value."""
    if not value:
        return NativeStream
    try:
        return PROTOCOLS[value]
    except KeyError:
        known = ", ".join(repr(name) for name in PROTOCOLS)
        raise ValidationError({QUERY_PARAM: [
            f"Unknown stream protocol {value!r}: use one of {known}, or leave it out for "
            "this library's own events."]}, code="invalid") from None
