"""docs/contract.md against the code: every setting, metric, error code and router reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from runtime import ErrorCode
from runtime.demo import registry as demo_registry
from runtime.recorder import RouteReason
from worker.config import OPTIONS
from worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "contract.md"
README = ROOT / "README.md"


def section(title: str, doc: Path = DOC) -> str:
    text = doc.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def rows(title: str, doc: Path = DOC) -> list[list[str]]:
    """The cells of every table row of a section (header and rule rows left out)."""
    out = []
    for line in section(title, doc).splitlines():
        if line.startswith("| `"):
            out.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return out


class TestContractDoc:
    def test_every_setting_with_flag_and_default(self) -> None:
        """The configuration table lists each option once, with its flag and default."""
        table = {r[0].strip("`"): r for r in rows("Configuration")}
        assert set(table) == {opt.env for opt in OPTIONS.values()}
        for opt in OPTIONS.values():
            row = table[opt.env]
            assert row[1] == f"`{opt.flag}`", opt.env
            if opt.default not in ("", None):
                default = f"{opt.default:g}" if isinstance(opt.default, float) else opt.default
                assert f"`{default}`" == row[2], (opt.env, row[2])

    def test_every_enumeration_lists_its_values(self) -> None:
        """An enumerated setting's meaning names each value its type accepts."""
        table = {r[0].strip("`"): r for r in rows("Configuration")}
        enumerations = [opt for opt in OPTIONS.values() if opt.choices]
        assert enumerations
        for opt in enumerations:
            assert all(f"`{choice}`" in table[opt.env][3] for choice in opt.choices), opt.env

    def test_readme_lists_every_setting_with_its_default(self) -> None:
        """The README's configuration table: the same variables and defaults."""
        table = {r[0].strip("`"): r for r in rows("Configuration", README)}
        assert set(table) == {opt.env for opt in OPTIONS.values()}
        for opt in OPTIONS.values():
            if opt.default not in ("", None):
                default = f"{opt.default:g}" if isinstance(opt.default, float) else opt.default
                assert table[opt.env][1].startswith(f"`{default}`"), (opt.env, table[opt.env][1])

    def test_every_metric(self) -> None:
        """The metrics table lists exactly what the worker exports under intentus_."""
        documented = {r[0].strip("`") for r in rows("Metrics")}
        exported = {
            metric.name.removesuffix("_total") + ("_total" if metric.type == "counter" else "")
            for metric in Metrics(demo_registry).registry.collect()
            if metric.name.startswith("intentus_")
        }
        assert documented == exported

    def test_every_error_code(self) -> None:
        """The error code table names every ErrorCode."""
        text = " ".join(r[0] for r in rows("Error codes"))
        assert set(re.findall(r"`([A-Z_]+)`", text)) == {code.value for code in ErrorCode}

    def test_every_router_reason(self) -> None:
        """Every reason the router and runtime write is explained."""
        documented = {r[0].strip("`") for r in rows("Routing")}
        written = set(get_args(RouteReason))
        assert len(written) == 10
        assert written <= documented

    def test_no_reference_outside_the_repository(self) -> None:
        """The contract is self-contained: no file outside the repository is named."""
        text = DOC.read_text(encoding="utf-8")
        assert "DESIGN" not in text and "../" not in text
