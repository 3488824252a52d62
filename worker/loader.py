"""Loading the user's agents (`module:attribute`) and policy, with clear errors (exit 2)."""

from __future__ import annotations

import importlib
import os
import sys

from runtime.errors import PolicyError
from runtime.policy import Policy, load_policy
from runtime.registry import AgentRegistry
from worker.config import option_error


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
        value = value()
    if not isinstance(value, AgentRegistry):
        raise option_error("agents", f"{spec} is a {type(value).__name__}, not an AgentRegistry")
    if len(value) == 0:
        raise option_error("agents", f"{spec} has no agents registered")
    return value


def load_policy_file(path: str) -> Policy:
    try:
        return load_policy(path or None)
    except PolicyError as exc:
        raise option_error("policy_file", str(exc)) from None
