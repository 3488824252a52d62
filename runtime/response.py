"""AgentResponse and ErrorInfo: what every request is answered with."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.canonical import compact_text, dumps, float_text, string_text
from runtime.errors import ErrorCode


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: str
    retryable: bool = False
    details: dict[str, Any] = Field(default_factory=dict)


class ResponseMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    execution_id: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    agent: str | None = None
    strategy: str | None = None
    attempts: int = 0
    latency_ms: float = 0.0
    replayable: bool = False


class AgentResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal["1.0"] = "1.0"
    status: Literal["success", "error"]
    payload: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    metadata: ResponseMetadata = Field(default_factory=ResponseMetadata)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @classmethod
    def from_json(cls, body: bytes | str) -> AgentResponse:
        return cls.model_validate_json(body)


def error_dict(
    code: ErrorCode, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"code": code.value, "message": message, "retryable": False, "details": details or {}}


def response_dict(
    *,
    payload: dict[str, Any] | None,
    error: dict[str, Any] | None,
    execution_id: str,
    request_id: str | None,
    trace_id: str | None,
    agent: str | None,
    strategy: str | None,
    attempts: int,
    latency_ms: float,
    replayable: bool,
) -> dict[str, Any]:
    """The response as plain JSON data, keys in wire order (what is stored and sent)."""
    return {
        "version": "1.0",
        "status": "error" if error is not None else "success",
        "payload": payload if error is None else None,
        "error": error,
        "metadata": {
            "execution_id": execution_id,
            "request_id": request_id,
            "trace_id": trace_id,
            "agent": agent,
            "strategy": strategy,
            "attempts": attempts,
            "latency_ms": round(latency_ms, 3),
            "replayable": replayable,
        },
    }


def response_body(response: dict[str, Any]) -> bytes:
    """The exact bytes published for a response; replay re-creates them from the record."""
    return dumps(response)


def metadata_json(
    *,
    execution_id: str,
    request_id: str | None,
    trace_id: str | None,
    agent: str | None,
    strategy: str | None,
    attempts: int,
    latency_ms: float,
    replayable: bool,
) -> str:
    """A response's `metadata` as JSON text, `latency_ms` already rounded as in the dict."""
    return (
        f'{{"execution_id":{string_text(execution_id)},'
        f'"request_id":{"null" if request_id is None else string_text(request_id)},'
        f'"trace_id":{"null" if trace_id is None else string_text(trace_id)},'
        f'"agent":{"null" if agent is None else string_text(agent)},'
        f'"strategy":{"null" if strategy is None else string_text(strategy)},'
        f'"attempts":{int.__repr__(attempts)},'
        f'"latency_ms":{float_text(latency_ms)},"replayable":{"true" if replayable else "false"}}}'
    )


def response_json(
    *,
    payload: dict[str, Any] | None,
    error: dict[str, Any] | None,
    metadata: str,
) -> bytes:
    """`response_body(response_dict(...))` from the payload, the error and the metadata's
    JSON text (`metadata_json`)."""
    if error is None:
        head = '{"version":"1.0","status":"success","payload":'
        return f'{head}{compact_text(payload)},"error":null,"metadata":{metadata}}}'.encode()
    return (
        '{"version":"1.0","status":"error","payload":null,"error":'
        f'{compact_text(error)},"metadata":{metadata}}}'
    ).encode()
