"""Loading the user's agents (`module:attribute`) and policy, with clear errors (exit 2)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable

from runtime.errors import PolicyError
from runtime.policy import Policy, load_policy
from runtime.registry import AgentRegistry
from worker.config import option_error


def agents_source(spec: str) -> str:
    """Where the agents come from, as said to the user."""
    return spec or "the built-in demo agents (runtime.demo; set INTENTUS_AGENTS for yours)"


def load_agents(spec: str) -> AgentRegistry:
    """`module:attribute` naming an AgentRegistry; empty means the built-in demo agents."""
    if not spec:
        from runtime.demo import registry

        return registry
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise option_error("agents", f"expected module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so `myagents:registry` works from the project folder
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise option_error(
            "agents", f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise option_error(
            "agents", f"module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if callable(value) and not isinstance(value, AgentRegistry):
        value = _from_factory(spec, value)
    if not isinstance(value, AgentRegistry):
        raise option_error(
            "agents",
            f"expected an AgentRegistry (or a function of no arguments returning one), "
            f"but {spec} is {_described(value)}",
        )
    if len(value) == 0:
        raise option_error("agents", f"{spec} has no agents registered")
    return value


def _described(value: object) -> str:
    kind = type(value).__name__
    return f"a {kind}" if kind[:1].lower() not in "aeiou" else f"an {kind}"


def _from_factory(spec: str, factory: Callable[..., object]) -> object:
    """Call a factory of no arguments; anything else (an agent's handler, most often) is
    named for what it is instead of failing with the TypeError of a wrong call."""
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise option_error(
            "agents",
            f"expected an AgentRegistry (or a function of no arguments returning one), but "
            f"{spec} is a {type(factory).__name__} taking arguments {_signature(factory)}: an "
            f"agent's handler? Register it on an AgentRegistry with @registry.agent(...) "
            f"and name the registry",
        ) from None
    except ValueError:  # no signature to read (some builtins): just call it
        pass
    try:
        return factory()
    except Exception as exc:
        raise option_error("agents", f"{spec}() raised {type(exc).__name__}: {exc}") from None


def _signature(value: Callable[..., object]) -> str:
    try:
        return str(inspect.signature(value))
    except (TypeError, ValueError):
        return "(...)"


def load_policy_file(path: str) -> Policy:
    try:
        return load_policy(path or None)
    except PolicyError as exc:
        raise option_error("policy_file", str(exc)) from None
