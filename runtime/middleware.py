"""Middleware: hooks around routing. `before_route` runs in order, `after_route` in reverse."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from runtime.observer import Observer

if TYPE_CHECKING:
    from runtime.envelope import IntentEnvelope
    from runtime.response import AgentResponse

log = logging.getLogger("intentus.runtime.middleware")


class Middleware:
    """Base class with no-op hooks; subclass and override what you need."""

    def before_route(self, envelope: IntentEnvelope) -> None:
        """Called before routing; may adjust the envelope (the record keeps what was routed)."""

    def after_route(self, envelope: IntentEnvelope, response: AgentResponse) -> None:
        """Called after routing with the final response (read-only by convention)."""


def _name(mw: object) -> str:
    return type(mw).__name__


def run_before(chain: Sequence[Middleware], envelope: IntentEnvelope, observer: Observer) -> None:
    for mw in chain:
        try:
            mw.before_route(envelope)
        except BaseException:  # user code: its SystemExit must not unwind the routing thread
            log.exception("middleware %s.before_route failed; the request goes on", _name(mw))
            observer.middleware_error(_name(mw), "before_route")


def run_after(
    chain: Sequence[Middleware],
    envelope: IntentEnvelope,
    response: AgentResponse,
    *,
    observer: Observer,
) -> None:
    for mw in reversed(chain):
        try:
            mw.after_route(envelope, response)
        except BaseException:  # user code: its SystemExit must not unwind the routing thread
            log.exception("middleware %s.after_route failed; the response stands", _name(mw))
            observer.middleware_error(_name(mw), "after_route")
