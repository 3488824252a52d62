"""Smoke tests of the benchmark scripts with tiny counts, so they cannot rot.

No timing is asserted (the figures depend on the machine); only that a script runs, prints a
figure for every backend or contender it was asked for, writes what it claims to, and cleans
up after itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import pg

ROOT = Path(__file__).resolve().parents[2]
N = 16
THREADS = 2
WARMUP = THREADS  # bench/store.py warms up with max(threads, n // 10) records


def run_bench(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "bench/store.py", "--n", str(N), "--threads", str(THREADS), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def medians(out: str) -> dict[str, dict[str, str]]:
    """The summary table: backend -> column -> cell."""
    lines = out.split("Medians over rounds:", 1)[1].strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(header, cells, strict=True))
    return table


class TestStoreBench:
    def test_memory_and_files_print_figures_and_clean_up(self, tmp_path: Path) -> None:
        """Both backends get a positive rate and client CPU; the files' folder is removed."""
        out = run_bench(
            "--rounds", "1", "--backends", "memory,files", "--records-dir", str(tmp_path)
        )
        assert out.startswith("command: ")
        table = medians(out)
        assert set(table) == {"memory", "files"}
        for backend in ("memory", "files"):
            assert float(table[backend]["records/s"]) > 0
            assert float(table[backend]["client CPU µs/rec"]) > 0
        assert float(table["memory"]["µs x memory"]) == 1.0
        assert float(table["files"]["µs x files"]) == 1.0
        assert list(tmp_path.iterdir()) == []

    def test_postgres_writes_every_record_to_the_database(self) -> None:
        """The postgres backend claims and commits every record, and reports its round trips."""
        with pg.temporary_database() as url:
            out = run_bench("--rounds", "1", "--backends", "postgres", "--pg-database", url)
            rows = pg.execute(
                url, "SELECT count(*) FROM intentus_executions WHERE record IS NOT NULL"
            )
            claims = pg.execute(
                url, "SELECT count(*) FROM intentus_executions WHERE record IS NULL"
            )
        assert rows == [(N + WARMUP,)]
        assert claims == [(0,)]
        figures = medians(out)["postgres"]
        assert float(figures["records/s"]) > 0
        # A share of a group claim's checkout per record, and a share of a commit's.
        assert float(figures["checkouts/rec"]) > 0
        assert float(figures["claims/stmt"]) >= 1.0
        assert float(figures["recs/stmt"]) >= 1.0

    def test_temporary_database_is_dropped(self) -> None:
        """With --pg-url the script creates its own database and drops it afterwards."""
        with pg.temporary_database():  # skips (or fails under CI) without a server
            pass
        query = "SELECT datname FROM pg_database WHERE starts_with(datname, 'intentus_bench_')"
        before = set(pg.execute(pg.PG_URL, query))
        out = run_bench("--rounds", "1", "--backends", "postgres", "--pg-url", pg.PG_URL)
        assert float(medians(out)["postgres"]["records/s"]) > 0
        assert set(pg.execute(pg.PG_URL, query)) <= before


class TestEndToEndBench:
    def test_postgres_contender_answers_every_request(self, broker: None, tmp_path: Path) -> None:
        """A worker on PostgreSQL records answers all requests; its database is dropped after."""
        with pg.temporary_database():  # skips (or fails under CI) without a server
            pass
        query = "SELECT datname FROM pg_database WHERE starts_with(datname, 'intentus_bench_')"
        before = set(pg.execute(pg.PG_URL, query))
        results = tmp_path / "e2e.json"
        args = ["--cases", "600B-w1", "--scale", "0.01", "--rounds", "1"]
        args += ["--contenders", "baseline,postgres", "--pg-url", pg.PG_URL, "--json", str(results)]
        proc = subprocess.run(
            [sys.executable, "-m", "bench.e2e", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = {r["contender"]: r for r in json.loads(results.read_text())["rows"]}
        assert set(rows) == {"baseline", "postgres"}
        for row in rows.values():
            assert row["msgs_per_s"] > 0
            assert (row["lost"], row["mismatched"]) == (0, 0)
        assert rows["postgres"]["database_us_per_req"] > 0
        assert set(pg.execute(pg.PG_URL, query)) <= before

    def test_contenders_are_compared_with_the_equal_durability_echo(
        self, broker: None, tmp_path: Path
    ) -> None:
        """The durable echo answers every request, and every contender gets its ratio to it."""
        results = tmp_path / "e2e.json"
        args = ["--cases", "600B-w256", "--scale", "0.02", "--rounds", "1"]
        args += ["--contenders", "durable-echo,memory", "--json", str(results)]
        proc = subprocess.run(
            [sys.executable, "-m", "bench.e2e", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = {r["contender"]: r for r in json.loads(results.read_text())["rows"]}
        assert set(rows) == {"durable-echo", "memory"}
        for row in rows.values():
            assert (row["lost"], row["mismatched"]) == (0, 0)
        assert rows["durable-echo"]["vs_durable_echo"] == 1.0
        assert rows["memory"]["vs_durable_echo"] > 0
        assert "vs durable echo" in proc.stdout
