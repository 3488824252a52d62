"""The deterministic order of agents: local first, then node priority, then name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Orderable(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def node_id(self) -> str | None: ...
    @property
    def node_priority(self) -> int: ...


def is_local(agent: Orderable) -> bool:
    """An agent without a node_id runs in this process: it comes before any remote one."""
    return agent.node_id is None


def ordering_key(agent: Orderable) -> tuple[int, int, str]:
    return (0 if is_local(agent) else 1, agent.node_priority, agent.name)


T = TypeVar("T", bound="Orderable")


def compute_ordering(agents: Iterable[T]) -> list[T]:
    """Same agents in, same order out: across processes, machines and registration order."""
    return sorted(agents, key=ordering_key)
