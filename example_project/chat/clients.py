"""The offline demo client as the example uses it: its pace comes from settings."""

from django.conf import settings

from django_agent_session.clients.demo import DemoClient


class ExampleDemoClient(DemoClient):
    """``DemoClient`` streaming one word per ``settings.DEMO_CLIENT_DELAY`` seconds.

    Read on every turn, so a test (or ``DEMO_CLIENT_DELAY=0.3 ./scripts/demo``) can slow the
    stream down enough to watch it, or to press Stop in the middle of it.
    """

    @property
    def delay(self) -> float:  # type: ignore[override]
        return settings.DEMO_CLIENT_DELAY
