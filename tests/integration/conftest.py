"""Fixtures of the integration suite: a custom agents module and a wire client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.wire import Wire
from tests.support.workerproc import ROOT

AGENTS_MODULE = "it_agents"
AGENTS_SOURCE = '''
"""Agents of the integration tests: every call appends "<agent> <requestId>" to IT_CALLS_FILE."""

import os
import time

from runtime import AgentError, AgentRegistry, ErrorCode

registry = AgentRegistry()


def _note(name, envelope):
    with open(os.environ["IT_CALLS_FILE"], "a", encoding="utf-8") as fh:
        fh.write(f"{name} {envelope.metadata.requestId}\\n")


@registry.agent("alpha", intents=["ProcessIntent"], node_priority=10)
def alpha(envelope):
    _note("alpha", envelope)
    envelope.payload["mutated_by"] = "alpha"  # the agent's private copy: must not leak
    return {"by": "alpha", "doc": envelope.payload.get("document_id")}


@registry.agent("beta", intents=["ProcessIntent"], node_priority=20)
def beta(envelope):
    _note("beta", envelope)
    return {"by": "beta", "doc": envelope.payload.get("document_id")}


@registry.agent("remote-zero", intents=["ProcessIntent"], node_id="node-2", node_priority=0)
def remote_zero(envelope):
    _note("remote-zero", envelope)
    return {"by": "remote-zero", "saw_mutation": "mutated_by" in envelope.payload}


@registry.agent("down", intents=["SummarizeIntent"], node_priority=10)
def down(envelope):
    _note("down", envelope)
    raise AgentError(ErrorCode.AGENT_UNAVAILABLE, "backend down")


@registry.agent("up", intents=["SummarizeIntent"], node_priority=20)
def up(envelope):
    _note("up", envelope)
    return {"summary": "short", "by": "up"}


@registry.agent("slowpoke", intents=["RaceIntent"], node_priority=10)
def slowpoke(envelope):
    _note("slowpoke", envelope)
    time.sleep(3.0)
    return {"by": "slowpoke"}


@registry.agent("fast", intents=["RaceIntent"], node_priority=20)
def fast(envelope):
    _note("fast", envelope)
    return {"by": "fast"}


@registry.agent("sleeper", intents=["SleepIntent"])
def sleeper(envelope):
    _note("sleeper", envelope)
    seconds = float(envelope.payload.get("seconds", 1.0))
    time.sleep(seconds)
    return {"slept_s": seconds}


@registry.agent("broken", intents=["BrokenIntent"])
def broken(envelope):
    _note("broken", envelope)
    raise ValueError("boom")


@registry.agent("laggard", intents=["LateIntent"], timeout_s=0.5)
def laggard(envelope):
    _note("laggard", envelope)
    time.sleep(2.0)
    return {"late": True}
'''


@dataclass
class Agents:
    """The test's agents module and the file its agents log their calls to."""

    folder: Path
    calls_file: Path

    @property
    def spec(self) -> str:
        return f"{AGENTS_MODULE}:registry"

    @property
    def env(self) -> dict[str, str]:
        """Worker/CLI environment that loads these agents."""
        return {
            "INTENTUS_AGENTS": self.spec,
            "PYTHONPATH": os.pathsep.join([str(self.folder), str(ROOT)]),
            "IT_CALLS_FILE": str(self.calls_file),
        }

    def calls(self) -> list[str]:
        try:
            return self.calls_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []


@pytest.fixture
def agents(tmp_path: Path) -> Agents:
    folder = tmp_path / "agents"
    folder.mkdir()
    (folder / f"{AGENTS_MODULE}.py").write_text(AGENTS_SOURCE, encoding="utf-8")
    return Agents(folder, tmp_path / "calls.log")


@pytest.fixture
def wire(broker: None) -> Iterator[Wire]:
    w = Wire()
    yield w
    w.close()
