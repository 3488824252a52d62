"""AgentRegistry: the user's agents, declared with a decorator."""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import RegistryError
from runtime.ordering import compute_ordering

Handler = Callable[[Any], Any]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Capability:
    """One `intents` entry: `Name` (version 1.0), `Name@Version`, `Name@*` or `*`."""

    name: str
    version: str

    @classmethod
    def parse(cls, spec: str) -> Capability:
        if not isinstance(spec, str) or not spec.strip():
            raise RegistryError(f"invalid intent capability {spec!r}")
        if spec == "*":
            return cls("*", "*")
        name, sep, version = spec.partition("@")
        if not name or (sep and not version):
            raise RegistryError(f"invalid intent capability {spec!r} (use Name, Name@Version or *)")
        return cls(name, version if sep else "1.0")

    def matches(self, intent_name: str, intent_version: str) -> bool:
        return (self.name == "*" or self.name == intent_name) and (
            self.version == "*" or self.version == intent_version
        )

    def __str__(self) -> str:
        return "*" if self.name == "*" else f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class AgentDefinition:
    name: str
    handler: Handler = field(compare=False, repr=False)
    capabilities: tuple[Capability, ...] = ()
    node_id: str | None = None
    node_priority: int = 100
    timeout_s: float | None = None
    #: An `async def` handler: it runs on an event loop, not on a routing thread.
    is_async: bool = False

    def handles(self, intent_name: str, intent_version: str) -> bool:
        return any(c.matches(intent_name, intent_version) for c in self.capabilities)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "intents": [str(c) for c in self.capabilities],
            "node_id": self.node_id,
            "node_priority": self.node_priority,
            "timeout_s": self.timeout_s,
            "async": self.is_async,
        }


def is_coroutine_function(handler: Handler) -> bool:
    """An `async def` function, a partial of one, or an object whose `__call__` is one."""
    method = inspect.getattr_static(type(handler), "__call__", None)  # an object's, inherited too
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(method)


class AgentRegistry:
    """Agents by unique name; candidates come back in the deterministic order."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentDefinition] = {}
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[AgentDefinition, ...]] = {}

    def agent(
        self,
        name: str,
        *,
        intents: Iterable[str],
        node_id: str | None = None,
        node_priority: int = 100,
        timeout_s: float | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator: register the function as agent `name` for `intents`."""

        def register(handler: Handler) -> Handler:
            self.register(
                name,
                handler,
                intents=intents,
                node_id=node_id,
                node_priority=node_priority,
                timeout_s=timeout_s,
            )
            return handler

        return register

    def register(
        self,
        name: str,
        handler: Handler,
        *,
        intents: Iterable[str],
        node_id: str | None = None,
        node_priority: int = 100,
        timeout_s: float | None = None,
    ) -> AgentDefinition:
        if not isinstance(name, str) or not _NAME.match(name):
            raise RegistryError(f"invalid agent name {name!r}")
        if not callable(handler):
            raise RegistryError(f"agent {name!r}: handler is not callable")
        if isinstance(intents, str):
            intents = [intents]
        caps = tuple(Capability.parse(spec) for spec in intents)
        if not caps:
            raise RegistryError(f"agent {name!r}: no intents given")
        if isinstance(node_priority, bool) or not isinstance(node_priority, int):
            raise RegistryError(f"agent {name!r}: node_priority must be an integer")
        if timeout_s is not None and not (timeout_s > 0):
            raise RegistryError(f"agent {name!r}: timeout_s must be positive")
        definition = AgentDefinition(
            name=name,
            handler=handler,
            capabilities=caps,
            node_id=node_id,
            node_priority=node_priority,
            timeout_s=float(timeout_s) if timeout_s is not None else None,
            is_async=is_coroutine_function(handler),
        )
        with self._lock:
            if name in self._agents:
                raise RegistryError(f"agent name {name!r} is already registered")
            self._agents[name] = definition
            self._cache.clear()
        return definition

    def get(self, name: str) -> AgentDefinition | None:
        return self._agents.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(compute_ordering(self._agents.values()))

    def names(self) -> list[str]:
        return [a.name for a in compute_ordering(self._agents.values())]

    def intent_names(self) -> set[str]:
        """Every concrete intent name some agent declares (for bounded metric labels)."""
        return {c.name for a in self._agents.values() for c in a.capabilities if c.name != "*"}

    def find_by_capability(
        self, intent_name: str, intent_version: str
    ) -> tuple[AgentDefinition, ...]:
        """Matching agents in deterministic order (cached per intent name and version)."""
        key = (intent_name, intent_version)
        found = self._cache.get(key)
        if found is None:
            found = tuple(
                compute_ordering(
                    a for a in self._agents.values() if a.handles(intent_name, intent_version)
                )
            )
            if len(self._cache) < 4096:
                self._cache[key] = found
        return found
