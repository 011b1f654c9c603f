"""The offline demo client as the example uses it: its pace comes from settings, and it can
answer in Markdown like a real model does."""

from django.conf import settings

from django_agent_session.clients.base import ModelRequest, ModelResponse
from django_agent_session.clients.demo import LABEL, DemoClient

#: a message starting with this gets a reply in Markdown: the rest of the message, written as
#: the model's own reply (or SAMPLE when nothing follows), so the page's renderer can be tried
MARKDOWN_COMMAND = "/markdown"

SAMPLE = """\
## What the chat page renders

Replies are **Markdown**, rendered *safely*:

- lists, `code spans` and [links](https://docs.djangoproject.com/)
- fenced code blocks:

```python
print("Hello from the offline demo")
```

> Raw HTML such as <b>this</b> stays text."""


class ExampleDemoClient(DemoClient):
    """``DemoClient`` streaming one word per ``settings.DEMO_CLIENT_DELAY`` seconds.

    Read on every turn, so a test (or ``DEMO_CLIENT_DELAY=0.3 ./scripts/demo``) can slow the
    stream down enough to watch it, or to press Stop in the middle of it.

    ``/markdown <text>`` answers with ``<text>`` itself (after a labelled first line), so a
    reply in Markdown can be tried without a model; ``/markdown`` alone answers with a sample.
    """

    @property
    def delay(self) -> float:  # type: ignore[override]
        return settings.DEMO_CLIENT_DELAY

    def reply(self, request: ModelRequest) -> ModelResponse:
        said = _last_user_text(request)
        if not said.startswith(MARKDOWN_COMMAND) or request.output_schema is not None:
            return super().reply(request)
        body = said[len(MARKDOWN_COMMAND):].strip() or SAMPLE
        text = f"{LABEL} Your Markdown, as a model's reply:\n\n{body}"
        usage = {"input_tokens": max(1, len(said) // 4), "output_tokens": max(1, len(text) // 4)}
        return ModelResponse(content=[{"type": "text", "text": text}], usage=usage,
                             model=request.model)


def _last_user_text(request: ModelRequest) -> str:
    """The text of the last message when it is the user's (not tool results)."""
    last = request.messages[-1] if request.messages else {}
    if last.get("role", "user") != "user":
        return ""
    content = last.get("content")
    if isinstance(content, str):
        return content.strip()
    blocks = content or []
    if any(b.get("type") == "tool_result" for b in blocks):
        return ""
    return " ".join(b.get("text", "") for b in blocks if b.get("type") == "text").strip()
