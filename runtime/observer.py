"""Hooks through which the pure runtime reports what it did (the worker turns them into metrics).

Every method is a no-op here; override the ones you need. They are called on the hot path and
must not raise or block.
"""

from __future__ import annotations


class Observer:
    def attempt_started(self, agent: str, attempt: int) -> None:
        """An agent attempt (numbered from 1 within the request) is about to run."""

    def attempt_finished(
        self, agent: str, *, status: str, error_code: str | None, seconds: float
    ) -> None:
        """One agent attempt ended (status `success` or `error`)."""

    def attempt_cancelled(self, agent: str) -> None:
        """An async agent's task was cancelled: at its deadline, or as a PARALLEL straggler."""

    def loop_stalled(self, seconds: float) -> None:
        """The event loop of async agents was blocked this long (an agent called blocking code
        inside `async def`); reported once per stall, while it lasts."""

    def fallback(self, intent: str) -> None:
        """FALLBACK moved on from a failed agent to the next."""

    def policy_filtered(self, agent: str, rule: str) -> None:
        """Policy removed `agent` from the candidates (`rule` is a rule id or `default`)."""

    def middleware_error(self, middleware: str, hook: str) -> None:
        """A middleware hook raised; the request went on."""

    def routed(
        self, intent: str, strategy: str, *, status: str, error_code: str | None, seconds: float
    ) -> None:
        """A request that was routed (not a duplicate answer) finished."""
