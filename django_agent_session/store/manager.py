"""The queryset/manager methods every concrete session model gets.

``start_session``, ``continue_session`` and ``get_context`` (and their ``a``-prefixed async
twins) validate first, then run one turn: store ``begin`` → engine → store ``commit`` (or
``fail``). The async twins call the model on the running event loop and reach the database only
through ``database_sync_to_async``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from channels.db import database_sync_to_async
from django.core.exceptions import ValidationError
from django.db import models

from .. import exceptions as exc
from ..conf import agent_settings
from ..declaration.schemas import validate
from ..declaration.tools import ToolContext
from ..engine.context import Context
from ..engine.turn import (
    ProgressCallback,
    TurnEngine,
    TurnResult,
    TurnState,
    aguard_progress,
    guard_progress,
    user_blocks_for,
)
from ..records import RunStatus, SessionRecord
from ..signals import turn_completed, turn_failed
from .heartbeat import akeep_alive, keep_alive
from .lease import retry_after
from .queries import SessionQueryMixin
from .sessions import insert_session
from .turns import SessionStore, Turn

#: one store and one engine per session model, built on first use (an engine is rebuilt when
#: the model's options are, as tests that swap tools do)
_stores: dict[type[SessionRecord], SessionStore] = {}
_engines: dict[type[SessionRecord], TurnEngine] = {}


class AgentSessionQuerySet(SessionQueryMixin, models.QuerySet):
    """Session queries plus the three session operations."""

    # -- helpers -----------------------------------------------------------------------------

    @property
    def _options(self) -> Any:
        options = self.model.agent_options
        if options is None:
            raise TypeError(f"{self.model.__name__} is abstract or has no Agent declaration")
        return options

    def _store(self) -> SessionStore:
        store = _stores.get(self.model)
        if store is None:
            store = _stores[self.model] = SessionStore(self.model)
        return store

    def _engine(self) -> TurnEngine:
        engine = _engines.get(self.model)
        if engine is None or engine.options is not self._options:
            engine = _engines[self.model] = TurnEngine(self._options)
        return engine

    def _prepare_input(self, input: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        options = self._options
        if isinstance(input, str) and "message" in options.input_serializer().fields:
            input = {"message": input}
        validated = validate(options.input_serializer, input)
        blocks = user_blocks_for(validated)
        size = sum(len(b.get("text", "")) for b in blocks)
        limit = agent_settings.MAX_INPUT_CHARS
        if size > limit:
            raise exc.InvalidInput(
                {"non_field_errors": [f"Input is {size} characters; the limit is {limit}."]},
                "Input too large.")
        return validated, blocks

    def validate_input(self, input: Any) -> dict[str, Any]:
        """Validate one turn's input as a turn would (``InvalidInput``), without running it.

        Surfaces use it to reject bad input before they commit to a response (an SSE 200, a
        queued WebSocket message); the turn validates again when it runs.
        """
        return self._prepare_input(input)[0]

    def initial_context(self, instruction_args: dict[str, Any] | None = None) -> Context:
        """The context a new session starts with: validated args, rendered system prompt."""
        options = self._options
        args = instruction_args or {}
        if options.instruction_serializer is not None:
            args = validate(options.instruction_serializer, args, exc.InvalidInstructionArgs,
                            "Invalid instruction args.")
        elif not isinstance(args, Mapping):  # the template reads args as a mapping
            raise exc.InvalidInstructionArgs({"non_field_errors": ["Expected an object."]},
                                             "Invalid instruction args.")
        system = options.template.render(args)
        return Context(system=system, instruction_args=args)

    def _pk(self, session_or_pk: Any) -> Any:
        if isinstance(session_or_pk, models.Model):
            return session_or_pk.pk
        try:
            return self.model._meta.pk.to_python(session_or_pk)
        except ValidationError:
            raise exc.SessionNotFound(f"No {self.model.__name__} with id {session_or_pk!r}.") \
                from None

    def _tool_context(self, turn: Turn) -> Any:
        return ToolContext(turn.session, turn.run_id)

    # -- sync --------------------------------------------------------------------------------

    def start_session(self, input: Any, *, instruction_args: dict[str, Any] | None = None,
                      owner: Any = None, title: str = "",
                      on_progress: ProgressCallback | None = None) -> Any:
        """Create a session and run its first turn; returns the saved session."""
        validated, blocks = self._prepare_input(input)
        context = self.initial_context(instruction_args)
        turn = self._store().create(context=context, owner=owner, title=title,
                                    input=validated, user_blocks=blocks)
        return self._run(turn, context, on_progress)

    def create_session(self, *, instruction_args: dict[str, Any] | None = None,
                       owner: Any = None, title: str = "", **fields: Any) -> Any:
        """Create a session without running a turn (its first message comes later)."""
        context = self.initial_context(instruction_args)
        return insert_session(self.model(owner=owner, title=title, **fields), context)

    def continue_session(self, session_or_pk: Any, input: Any, *,
                         on_progress: ProgressCallback | None = None) -> Any:
        """Run one turn on an existing session; returns the saved session."""
        validated, blocks = self._prepare_input(input)
        turn = self._store().begin(self._pk(session_or_pk), input=validated, user_blocks=blocks)
        try:
            context = turn.session.get_context()
        except BaseException as error:  # unreadable stored data: fail the run, free the lease
            raise self._failed(turn, error, TurnState())  # noqa: B904
        return self._run(turn, context, on_progress)

    def get_context(self, pk: Any) -> Context:
        """The stored context of session ``pk``."""
        session = self._get(pk)
        return session.get_context()

    def _get(self, pk: Any) -> Any:
        pk = self._pk(pk)
        try:
            return self.get(pk=pk)
        except self.model.DoesNotExist as error:
            raise exc.SessionNotFound(f"No {self.model.__name__} with id {pk}.") from error

    def _run(self, turn: Turn, context: Context, on_progress: ProgressCallback | None) -> Any:
        on_progress = guard_progress(on_progress)

        store, state = self._store(), TurnState()
        try:
            if on_progress is not None:
                on_progress("run.started", {"run_id": str(turn.run_id)})
            with keep_alive(store, turn):
                result = self._engine().run(
                    context, turn.user_blocks, self._options.get_client(), state=state,
                    tool_context=self._tool_context(turn), on_progress=on_progress,
                    heartbeat=lambda: store.renew(turn))
            session = store.commit(turn, context, result)
        except BaseException as error:
            raise self._failed(turn, error, state)  # noqa: B904 (cause set in _failed)
        self._completed(session, turn, result)
        return session

    def _failed(self, turn: Turn, error: BaseException, state: TurnState) -> BaseException:
        """Record the failure; return the exception the caller should see."""
        status = RunStatus.FAILED
        typed: exc.AgentSessionError
        if not isinstance(error, Exception):  # CancelledError, KeyboardInterrupt, SystemExit
            status, typed = RunStatus.CANCELLED, exc.TurnCancelled("The turn was cancelled.")
        elif isinstance(error, exc.AgentSessionError):
            typed = error
        else:
            typed = exc.AgentSessionError(f"{type(error).__name__}: {error}")
            typed.code = "internal_error"
        record = self._store().fail(turn, typed, state, status)
        self._send_failed(turn, typed)
        if status == RunStatus.CANCELLED:
            error.turn = record  # type: ignore[attr-defined]  # set on a BaseException too
            return error  # cancellation (or exit) must keep propagating as such
        if typed is not error:
            typed.__cause__ = error
        typed.session = turn.session  # type: ignore[attr-defined]
        typed.turn = record  # type: ignore[attr-defined]
        return typed

    def _completed(self, session: Any, turn: Turn, result: TurnResult) -> None:
        turn_completed.send_robust(self.model, session=session, run_id=turn.run_id,
                                   output=result.output)

    def _send_failed(self, turn: Turn, error: exc.AgentSessionError) -> None:
        turn_failed.send_robust(self.model, session=turn.session, run_id=turn.run_id,
                                error=error)

    # -- async -------------------------------------------------------------------------------

    async def astart_session(self, input: Any, *, instruction_args: dict[str, Any] | None = None,
                             owner: Any = None, title: str = "",
                             on_progress: ProgressCallback | None = None) -> Any:
        """Async twin of :meth:`start_session`."""
        validated, blocks = self._prepare_input(input)
        context = self.initial_context(instruction_args)
        turn, cancel = await self._settled(
            self._store().create, context=context, owner=owner, title=title, input=validated,
            user_blocks=blocks)
        if cancel is not None:  # the session was created holding a lease: release it
            raise await database_sync_to_async(self._failed)(turn, cancel, TurnState())
        return await self._arun(turn, context, on_progress)

    async def acreate_session(self, **kwargs: Any) -> Any:
        """Async twin of :meth:`create_session`."""
        return await database_sync_to_async(self.create_session)(**kwargs)

    async def acontinue_session(self, session_or_pk: Any, input: Any, *,
                                on_progress: ProgressCallback | None = None) -> Any:
        """Async twin of :meth:`continue_session` (waits for the lease without blocking)."""
        validated, blocks = self._prepare_input(input)
        store, pk = self._store(), self._pk(session_or_pk)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + agent_settings.TURN_WAIT_SECONDS
        while True:
            result, cancel = await self._settled(store.try_begin, pk, input=validated,
                                                 user_blocks=blocks)
            if cancel is not None:
                if isinstance(result, Turn):  # the lease was taken meanwhile: release it
                    raise await database_sync_to_async(self._failed)(result, cancel,
                                                                     TurnState())
                raise cancel
            if isinstance(result, Turn):
                turn = result
                break
            if loop.time() >= deadline:
                raise exc.SessionBusy(retry_after=retry_after(result))
            await asyncio.sleep(agent_settings.TURN_POLL_SECONDS)
        try:
            context = turn.session.get_context()
        except BaseException as error:  # unreadable stored data: fail the run, free the lease
            failure = await database_sync_to_async(self._failed)(turn, error, TurnState())
            raise failure  # noqa: B904
        return await self._arun(turn, context, on_progress)

    async def aget_context(self, pk: Any) -> Context:
        """Async twin of :meth:`get_context`."""
        return await database_sync_to_async(self.get_context)(pk)

    async def _arun(self, turn: Turn, context: Context,
                    on_progress: ProgressCallback | None) -> Any:
        on_progress = aguard_progress(on_progress)

        store, state = self._store(), TurnState()
        try:
            if on_progress is not None:
                await on_progress("run.started", {"run_id": str(turn.run_id)})
            async with akeep_alive(store, turn):
                result = await self._engine().arun(
                    context, turn.user_blocks, self._options.get_client(), state=state,
                    tool_context=self._tool_context(turn), on_progress=on_progress,
                    heartbeat=database_sync_to_async(lambda: store.renew(turn)))
            session, cancel = await self._settled(store.commit, turn, context, result)
        except BaseException as error:
            failure = await asyncio.shield(database_sync_to_async(self._failed)(turn, error, state))
            raise failure  # noqa: B904
        if turn_completed.has_listeners(self.model):  # receivers may use the ORM
            await database_sync_to_async(self._completed)(session, turn, result)
        if cancel is not None:  # cancelled while the commit ran: the turn completed all the same
            cancel.turn = session.last_turn  # type: ignore[attr-defined]
            raise cancel
        return session

    @staticmethod
    async def _settled(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, BaseException | None]:
        """``database_sync_to_async(call)(...)`` whose outcome a cancellation cannot hide.

        A cancellation reaches the awaiting coroutine, not the thread, so the call runs to its
        end anyway; what it did (a lease taken, a turn committed) must be known to be undone or
        reported. Returns ``(result, cancellation or None)``; if the call failed after a
        cancellation, the cancellation is raised.
        """
        task = asyncio.ensure_future(database_sync_to_async(call)(*args, **kwargs))
        try:
            return await asyncio.shield(task), None
        except asyncio.CancelledError as cancel:
            try:
                result = await task
            except BaseException:
                raise cancel from None
            return result, cancel


AgentSessionManager = models.Manager.from_queryset(AgentSessionQuerySet)
AgentSessionManager.__name__ = "AgentSessionManager"


__all__ = ["AgentSessionManager", "AgentSessionQuerySet"]
