"""Cost of runs and sessions, the cost budget and the weighted token budget, through the real
SDK and the loopback Messages API."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.engine import declared
from tests.helpers.loopback import loopback_settings
from tests.testapp.models import ChatAgent, ToolAgent

pytestmark = pytest.mark.django_db

ARGS = {"company_name": "Acme"}
#: priced like Sonnet: $3 in, $15 out, cache writes $3.75, cache reads $0.30 per million
PRICE = {"claude-sonnet-5-5": {"input": "3", "output": "15"}}
#: $0.030750 a call (tests/engine/test_pricing.py)
USAGE = {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 5000,
         "cache_read_input_tokens": 20000}
CALL = Decimal("0.030750")


@pytest.fixture
def priced(loopback):
    with override_settings(AGENT_SESSION=loopback_settings(loopback, PRICES=PRICE)):
        yield loopback


def reply(text="ok"):
    return Reply.text(text, usage=USAGE)


class TestCost:
    def test_a_run_with_cache_writes_and_reads_costs_what_the_table_says(self, priced):
        priced.enqueue(reply())
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        run = AgentRun.objects.get(session_id=session.pk)
        assert run.cost == CALL
        assert session.get_context().cost == CALL
        completed = AgentEvent.objects.get(session_id=session.pk, type="run.completed")
        assert completed.data["cost"] == "0.030750"

    def test_a_tool_loop_sums_its_calls_and_the_context_sums_its_turns(self, priced):
        priced.enqueue(Reply.tool_use("lookup_order", {"number": 1}, usage=USAGE), reply(),
                       reply())
        session = ToolAgent.objects.start_session("Order 1?", instruction_args=ARGS)
        session = ToolAgent.objects.continue_session(session, "Thanks")
        first, second = AgentRun.objects.filter(session_id=session.pk).order_by("started_at")
        assert first.cost == 2 * CALL and second.cost == CALL
        assert session.get_context().cost == 3 * CALL

    def test_a_model_without_a_price_has_an_unknown_cost_not_zero(self, loopback):
        loopback.enqueue(reply())
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        assert AgentRun.objects.get(session_id=session.pk).cost is None
        assert session.get_context().cost is None

    def test_a_failed_run_records_what_its_calls_cost(self, priced):
        priced.enqueue(Reply.tool_use("lookup_order", {"number": 1}, usage=USAGE),
                       Reply.server_error())
        with pytest.raises(exc.ModelError):
            ToolAgent.objects.start_session("Order 1?", instruction_args=ARGS)
        run = AgentRun.objects.get()
        assert run.status == RunStatus.FAILED and run.cost == CALL


class TestCostBudget:
    def test_halt_refuses_the_turn_after_the_budget_is_spent_and_warns_before(self, priced):
        priced.enqueue(reply(), reply())
        with declared(ChatAgent, cost_budget="0.05"):
            session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
            assert not AgentEvent.objects.filter(type="budget.warning").exists()
            session = ChatAgent.objects.continue_session(session, "Again")  # $0.0615 spent
            warning = AgentEvent.objects.get(type="budget.warning")
            assert warning.data == {"cost": "0.061500", "cost_budget": "0.05"}
            with pytest.raises(exc.CostBudgetExceeded) as caught:
                ChatAgent.objects.continue_session(session, "Once more")
        assert caught.value.code == "cost_budget_exceeded"
        assert len(priced.message_requests) == 2  # refused before the model was called
        assert AgentRun.objects.filter(status=RunStatus.FAILED).get().error["code"] == \
            "cost_budget_exceeded"

    def test_what_failed_and_cut_off_turns_spent_counts_too(self, priced):
        # each turn fails, so the context never counts its spend: the budget still does
        priced.enqueue(Reply.max_tokens("A long answer that", usage=USAGE),
                       Reply.refusal("No.", usage=USAGE), Reply.server_error())
        with declared(ChatAgent, cost_budget="0.05"):
            session = ChatAgent.objects.create(context={})
            with pytest.raises(exc.ReplyIncomplete):
                ChatAgent.objects.continue_session(session, "Hi")
            with pytest.raises(exc.ModelRefused):  # $0.03075 spent: under the budget
                ChatAgent.objects.continue_session(session, "Hi again")
            with pytest.raises(exc.CostBudgetExceeded) as caught:  # $0.0615
                ChatAgent.objects.continue_session(session, "Once more")
        assert caught.value.details["cost"] == "0.061500"
        assert len(priced.message_requests) == 2  # refused before the model was called
        assert session.get_context().cost == 0  # the context is as it was

    def test_halt_stops_a_tool_loop_that_spends_it(self, priced):
        priced.enqueue(Reply.tool_use("lookup_order", {"number": 1}, usage=USAGE))
        with declared(ToolAgent, cost_budget=Decimal("0.02")), \
                pytest.raises(exc.CostBudgetExceeded, match="inside the tool loop"):
            ToolAgent.objects.start_session("Order 1?", instruction_args=ARGS)
        assert not AgentEvent.objects.filter(type="tool.call").exists()

    def test_warn_lets_turns_go_on(self, priced):
        priced.enqueue(reply(), reply(), reply())
        with declared(ChatAgent, cost_budget=0.05, budget_strategy="warn"):
            session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
            session = ChatAgent.objects.continue_session(session, "Again")
            session = ChatAgent.objects.continue_session(session, "And again")
        assert session.get_context().cost == 3 * CALL
        assert AgentEvent.objects.filter(type="budget.warning").count() == 1


class TestTokenBudgetWeights:
    def test_cache_reads_count_a_tenth(self, loopback):
        # one call: 1,000 + 200 + 5,000 x 1.25 + 20,000 x 0.1 = 9,450 weighted tokens
        loopback.enqueue(reply(), reply())
        with declared(ChatAgent, token_budget=9451):
            session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
            session = ChatAgent.objects.continue_session(session, "Again")  # 9,450 < 9,451
            with pytest.raises(exc.TokenBudgetExceeded) as caught:
                ChatAgent.objects.continue_session(session, "Third")
        assert caught.value.details["used"] == 18900
