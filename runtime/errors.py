"""Error codes and the runtime's exception tree.

    IntentusError                 base of everything the runtime raises on purpose
    +-- EnvelopeError             bad input: carries an ErrorCode and the offending field
    +-- PolicyError               an invalid policy (file, dict or rule), with line and reason
    +-- RegistryError             a bad agent registration (duplicate name, bad capability)
    +-- RecordStoreError          the record store cannot be used
    |   +-- RecordExists          a record with this executionId is already stored
    +-- RecordNotFound            no record for the given id

AgentError is not part of the tree: agents raise it to fail on purpose, and the runtime
turns it into data (an AgentResponse with an ErrorInfo), never into an exception.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    CAPABILITY_NOT_FOUND = "CAPABILITY_NOT_FOUND"
    ROUTING_ERROR = "ROUTING_ERROR"
    UNAUTHORIZED = "UNAUTHORIZED"
    AGENT_ERROR = "AGENT_ERROR"
    AGENT_UNAVAILABLE = "AGENT_UNAVAILABLE"
    AGENT_TIMEOUT = "AGENT_TIMEOUT"
    INTERNAL_AGENT_ERROR = "INTERNAL_AGENT_ERROR"
    EXECUTION_IN_DOUBT = "EXECUTION_IN_DOUBT"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"


class AgentError(Exception):
    """Raised by an agent handler to fail explicitly with a code."""

    def __init__(
        self, code: ErrorCode | str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = dict(details or {})


class IntentusError(Exception):
    """Base of the runtime's own exceptions."""


class EnvelopeError(IntentusError):
    """The request could not be turned into a valid IntentEnvelope."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def details(self) -> dict[str, Any]:
        return {"field": self.field} if self.field else {}


class PolicyError(IntentusError):
    """The policy is invalid; the message names the line (or rule) and the reason."""


class RegistryError(IntentusError):
    """An agent registration is invalid."""


class RecordStoreError(IntentusError):
    """The record store cannot read or write."""


class RecordUnstorable(RecordStoreError):
    """The store refuses this one record (a value it cannot hold); it works for the others."""


class RecordExists(RecordStoreError):
    """A record with this executionId already exists; records are never rewritten."""


class RecordNotFound(IntentusError):
    """No record matches the given id."""
