"""Ordering and the registry: (local first, node_priority, name), whatever the registration order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import AgentRegistry, RegistryError
from runtime.ordering import compute_ordering, ordering_key

agent_specs = st.lists(
    st.tuples(
        st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
        st.one_of(st.none(), st.sampled_from(["n1", "n2"])),
        st.integers(min_value=-5, max_value=300),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda spec: spec[0],
)


def build(specs: list[tuple[str, str | None, int]]) -> AgentRegistry:
    reg = AgentRegistry()
    for name, node, prio in specs:
        reg.register(name, lambda env: {}, intents=["I"], node_id=node, node_priority=prio)
    return reg


class TestOrderingProperty:
    @settings(max_examples=200, deadline=None)
    @given(agent_specs, st.randoms(use_true_random=False))
    def test_any_registration_order_gives_the_same_sorted_order(
        self, specs: list[tuple[str, str | None, int]], rnd: Any
    ) -> None:
        """For random agents in any registration order the try order is identical and sorted."""
        shuffled = list(specs)
        rnd.shuffle(shuffled)
        a = [x.name for x in build(specs).find_by_capability("I", "1.0")]
        b = [x.name for x in build(shuffled).find_by_capability("I", "1.0")]
        assert a == b
        expected = sorted(specs, key=lambda s: (0 if s[1] is None else 1, s[2], s[0]))
        assert a == [s[0] for s in expected]

    def test_key(self) -> None:
        """The key is (0 for local else 1, node_priority, name)."""
        reg = build([("b", None, 5), ("a", "n", 1)])
        assert [ordering_key(x) for x in reg] == [(0, 5, "b"), (1, 1, "a")]
        assert [x.name for x in compute_ordering(reg)] == ["b", "a"]


class TestRegistry:
    def test_decorator_returns_the_function(self) -> None:
        """@registry.agent registers and returns the handler unchanged."""
        reg = AgentRegistry()

        @reg.agent("x", intents=["A", "B@2.0"], node_priority=7, timeout_s=3)
        def handler(env: Any) -> dict[str, Any]:
            return {}

        assert handler({}) == {}
        definition = reg.get("x")
        assert definition is not None
        assert definition.describe() == {
            "name": "x",
            "intents": ["A@1.0", "B@2.0"],
            "node_id": None,
            "node_priority": 7,
            "timeout_s": 3.0,
            "async": False,
        }

    def test_duplicate_names_rejected(self) -> None:
        """Names are unique."""
        reg = AgentRegistry()
        reg.register("x", lambda e: {}, intents=["A"])
        with pytest.raises(RegistryError, match="already registered"):
            reg.register("x", lambda e: {}, intents=["B"])

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"intents": []},
            {"intents": ["A@"]},
            {"intents": ["@1"]},
            {"intents": ["A"], "timeout_s": 0},
            {"intents": ["A"], "node_priority": "1"},
            {"intents": ["A"], "node_priority": True},
        ],
    )
    def test_bad_registrations(self, kwargs: dict[str, Any]) -> None:
        """Bad capabilities, timeouts and priorities are RegistryError."""
        with pytest.raises(RegistryError):
            AgentRegistry().register("x", lambda e: {}, **kwargs)

    @pytest.mark.parametrize("name", ["", "../x", "a b", "x" * 200])
    def test_bad_names(self, name: str) -> None:
        """Agent names are short identifiers."""
        with pytest.raises(RegistryError):
            AgentRegistry().register(name, lambda e: {}, intents=["A"])

    def test_capability_matching(self) -> None:
        """Name means version 1.0; Name@* any version; * anything."""
        reg = AgentRegistry()
        reg.register("plain", lambda e: {}, intents=["A"])
        reg.register("anyv", lambda e: {}, intents=["A@*"])
        reg.register("all", lambda e: {}, intents=["*"])
        names = lambda n, v: [a.name for a in reg.find_by_capability(n, v)]  # noqa: E731
        assert names("A", "1.0") == ["all", "anyv", "plain"]
        assert names("A", "2.0") == ["all", "anyv"]
        assert names("B", "1.0") == ["all"]

    def test_cache_is_invalidated_by_registration(self) -> None:
        """A registration after a lookup is seen by the next lookup."""
        reg = AgentRegistry()
        reg.register("b", lambda e: {}, intents=["A"])
        assert [a.name for a in reg.find_by_capability("A", "1.0")] == ["b"]
        reg.register("a", lambda e: {}, intents=["A"])
        assert [a.name for a in reg.find_by_capability("A", "1.0")] == ["a", "b"]
