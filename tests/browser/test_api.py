"""The record browser's JSON API and safety rules, over records made by the real runtime."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import subprocess
import sys
from datetime import timedelta
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest

from runtime import AgentRegistry, load_policy
from runtime import replay as records
from runtime.query import is_indexed
from tests.browser.conftest import Recorded
from tests.browser.corpus import HOSTILE_ID, POLICY, SCRIPT
from tests.browser.webclient import fetch
from worker.browser.handler import CSP, check_token
from worker.browser.server import RecordBrowser
from worker.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-m", "worker.cli", "records", "serve"]


def listing(server: RecordBrowser, **params: object) -> dict:
    reply = fetch(server.port, "/api/records", params)
    assert reply.status == 200, reply.body
    return reply.json()


class TestList:
    def test_newest_first_and_complete(self, server, recorded: Recorded) -> None:
        """Every readable record is listed once, newest first (createdAt, then executionId)."""
        page = listing(server, limit=500)
        assert page["total"] == len(recorded.corpus.ids)
        ids = [r["executionId"] for r in page["rows"]]
        assert sorted(ids) == sorted(recorded.corpus.ids.values())
        keys = [(r["createdAt"], r["executionId"]) for r in page["rows"]]
        assert keys == sorted(keys, reverse=True)
        assert ids[0] == recorded.corpus.ids["rejected"]  # routed last

    def test_pages_tile_the_listing(self, server) -> None:
        """limit/offset pages are disjoint, in order, and together are the whole listing."""
        whole = [r["executionId"] for r in listing(server, limit=500)["rows"]]
        pieces: list[str] = []
        for offset in range(0, len(whole), 4):
            page = listing(server, limit=4, offset=offset)
            assert page["total"] == len(whole)
            pieces += [r["executionId"] for r in page["rows"]]
        assert pieces == whole
        assert listing(server, offset=len(whole))["rows"] == []

    def test_filters(self, server, recorded: Recorded) -> None:
        """intent, status, error code and agent each narrow the listing to what matches."""
        ids = recorded.corpus.ids
        by_intent = listing(server, intent="SummarizeIntent")
        assert [r["executionId"] for r in by_intent["rows"]] == [ids["fallback"]]
        errors = listing(server, status="error")["rows"]
        assert {r["executionId"] for r in errors} == {
            ids[n] for n in ("error", "timeout", "missing", "rejected")
        }
        assert all(r["status"] == "error" for r in errors)
        timeouts = listing(server, error_code="AGENT_TIMEOUT")["rows"]
        assert [r["executionId"] for r in timeouts] == [ids["timeout"]]
        by_agent = listing(server, agent="quick")["rows"]
        assert [r["executionId"] for r in by_agent] == [ids["parallel"]]
        both = listing(server, intent="ProcessIntent", status="error")
        assert both["total"] == 0

    def test_counts_by_status_ignore_the_status_filter(self, server, recorded: Recorded) -> None:
        """The counts are of the other filters, so every status can be offered with its count."""
        all_counts = listing(server)["counts"]
        assert all_counts == {"success": 10, "error": 4}
        assert listing(server, status="success")["counts"] == all_counts
        assert listing(server, intent="ProcessIntent")["counts"] == {"success": 8}

    def test_search_by_whole_id(self, server, recorded: Recorded) -> None:
        """q finds a record by its executionId, requestId or correlationId."""
        ids = recorded.corpus.ids
        for q, name in (
            (ids["error"], "error"),
            ("req-fallback", "fallback"),
            ("corr-timeout", "timeout"),
        ):
            assert [r["executionId"] for r in listing(server, q=q)["rows"]] == [ids[name]], q
        assert listing(server, q="no-such-id")["total"] == 0

    def test_search_by_part_of_an_id(self, server, recorded: Recorded) -> None:
        """On a scanned store, q also matches any part of an id, in any case; an indexed
        store matches whole ids only (an index lookup), as documented."""
        ids = recorded.corpus.ids
        if is_indexed(recorded.store):
            assert listing(server, q="REQ-FALLB")["total"] == 0
            assert listing(server, q=ids["error"][5:17])["total"] == 0
            return
        assert [r["executionId"] for r in listing(server, q="REQ-FALLB")["rows"]] == [
            ids["fallback"]
        ]
        assert [r["executionId"] for r in listing(server, q=ids["error"][5:17])["rows"]] == [
            ids["error"]
        ]

    def test_time_window(self, server, recorded: Recorded) -> None:
        """since is inclusive and until exclusive; ISO 8601 times and durations are accepted."""
        created = recorded.corpus.created
        since = (created["error"] - timedelta(seconds=1)).isoformat()
        until = (created["parallel"] - timedelta(seconds=1)).isoformat()
        rows = listing(server, since=since, until=until, limit=500)["rows"]
        assert {r["executionId"] for r in rows} == {
            recorded.corpus.ids[n] for n in ("error", "timeout")
        }
        assert listing(server, since="1h")["total"] == 0  # the corpus is from 2024

    def test_bad_parameters(self, server) -> None:
        """A malformed limit, offset or time is a 400 naming the parameter."""
        for params in ({"limit": "x"}, {"limit": 0}, {"limit": 501}, {"offset": -1}):
            reply = fetch(server.port, "/api/records", params)
            assert reply.status == 400
            assert next(iter(params)) in reply.json()["error"]
        reply = fetch(server.port, "/api/records", {"since": "yesterday"})
        assert reply.status == 400 and "since" in reply.json()["error"]

    def test_says_whether_it_scans(self, server, recorded: Recorded) -> None:
        """A store without an index is flagged, so the page can say that listings scan."""
        kind, indexed = {"files": ("files", False), "postgres": ("postgresql", True)}[
            recorded.backend
        ]
        page = listing(server)
        info = fetch(server.port, "/api/info").json()
        assert (info["store"], info["indexed"], page["indexed"]) == (kind, indexed, indexed)
        assert info["verifiesRouting"] is False
        if indexed:
            assert page["note"] is None and info["note"] is None
        else:
            assert "every record" in page["note"] and "every record" in info["note"]


class TestRecord:
    def test_by_any_id(self, server, recorded: Recorded) -> None:
        """A record is found by executionId, requestId or correlationId."""
        eid = recorded.corpus.ids["fallback"]
        for ident in (eid, "req-fallback", "corr-fallback"):
            reply = fetch(server.port, "/api/record", {"id": ident})
            assert reply.status == 200
            assert reply.json()["executionId"] == eid

    def test_record_and_stored_reply(self, server, recorded: Recorded) -> None:
        """The record is returned whole, with the reply exactly as it was sent."""
        for name in ("fallback", "rejected", "script"):
            data = fetch(server.port, "/api/record", {"id": recorded.corpus.ids[name]}).json()
            stored = recorded.store.get(recorded.corpus.ids[name])
            assert stored is not None
            assert data["record"] == json.loads(stored)
            assert data["reply"].encode() == recorded.corpus.replies[name]

    def test_user_input_is_data(self, server, recorded: Recorded) -> None:
        """A payload holding <script> comes back as a JSON string, in a JSON response."""
        reply = fetch(server.port, "/api/record", {"id": HOSTILE_ID})
        assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
        record = reply.json()["record"]
        assert record["envelope"]["payload"]["note"] == SCRIPT
        assert record["header"]["requestId"] == HOSTILE_ID

    def test_not_found_and_missing_id(self, server) -> None:
        """An unknown id is a 404; no id at all is a 400."""
        assert fetch(server.port, "/api/record", {"id": "nothing-like-this"}).status == 404
        assert fetch(server.port, "/api/record").status == 400
        assert fetch(server.port, "/api/nothing").status == 404


class TestVerifyDiffStats:
    def test_verify(self, server, recorded: Recorded) -> None:
        """Every record of the corpus verifies; without agents only integrity is checked."""
        for name, eid in recorded.corpus.ids.items():
            result = fetch(server.port, "/api/verify", {"id": eid}).json()
            assert result["ok"], (name, result["problems"])
            assert result["routingChecked"] is False

    def test_verify_with_agents_checks_routing(self, recorded: Recorded) -> None:
        """Given agents and policy, verify re-plans the routing and reports a change."""
        policy = load_policy(POLICY)
        browser = RecordBrowser(
            recorded.store, port=0, registry=recorded.registry, policy=policy
        ).start()
        changed = AgentRegistry()
        changed.register("backup", lambda e: {}, intents=["SummarizeIntent"], node_priority=1)
        changed.register("primary", lambda e: {}, intents=["SummarizeIntent"], node_priority=10)
        other = RecordBrowser(recorded.store, port=0, registry=changed, policy=policy).start()
        try:
            for name, ident in recorded.corpus.ids.items():
                good = fetch(browser.port, "/api/verify", {"id": ident}).json()
                assert good["ok"] and good["routingChecked"], (name, good["problems"])
            eid = recorded.corpus.ids["fallback"]
            bad = fetch(other.port, "/api/verify", {"id": eid}).json()
            assert not bad["ok"]
            assert any("not reproducible" in p for p in bad["problems"])
        finally:
            browser.close()
            other.close()

    def test_verify_with_foreign_agents(self, recorded: Recorded) -> None:
        """Agents that know none of a record's (the demo ones) check integrity only, and say so."""
        from runtime.demo import registry as demo

        browser = RecordBrowser(recorded.store, port=0, registry=demo, agents="demo").start()
        try:
            result = fetch(browser.port, "/api/verify", {"id": recorded.corpus.ids["fallback"]})
            data = result.json()
            assert data["ok"] and not data["routingChecked"]
            assert records.ROUTING_UNCHECKED in data["notes"]
        finally:
            browser.close()

    def test_diff(self, server, recorded: Recorded) -> None:
        """diff gives each differing path with both values, as `records diff` finds them."""
        a, b = recorded.corpus.ids["direct"], recorded.corpus.ids["bulk-0"]
        data = fetch(server.port, "/api/diff", {"a": a, "b": "req-bulk-0"}).json()
        assert (data["a"]["executionId"], data["b"]["executionId"]) == (a, b)
        rows = {row["path"]: row for row in data["differences"]}
        assert rows["header.requestId"] == {
            "path": "header.requestId",
            "a": "req-direct",
            "b": "req-bulk-0",
        }
        assert len(rows) == len(records.diff(data["a"]["record"], data["b"]["record"]))
        same = fetch(server.port, "/api/diff", {"a": a, "b": a}).json()
        assert same["differences"] == []

    def test_diff_marks_absent_sides(self, server, recorded: Recorded) -> None:
        """A path present on one side only carries that side's value alone."""
        ids = recorded.corpus.ids
        data = fetch(server.port, "/api/diff", {"a": ids["direct"], "b": ids["fallback"]}).json()
        only_b = [row for row in data["differences"] if "a" not in row]
        assert only_b and all("b" in row for row in only_b)
        assert any(row["path"].startswith("events[") for row in only_b)

    def test_stats(self, server, recorded: Recorded) -> None:
        """stats counts what `records stats` counts."""
        data = fetch(server.port, "/api/stats").json()
        assert data["records"] == len(recorded.corpus.ids)
        assert data["by_status"] == {"success": 10, "error": 4}
        assert data["by_kind"]["rejected"] == 1


class TestSafety:
    def test_headers_on_every_response(self, server) -> None:
        """Page, script, style, API and errors all carry the CSP and nosniff."""
        for path in ("/", "/static/app.js", "/static/style.css", "/api/info", "/nowhere"):
            reply = fetch(server.port, path)
            assert reply.headers["Content-Security-Policy"] == CSP, path
            assert reply.headers["X-Content-Type-Options"] == "nosniff", path
            assert reply.headers["X-Frame-Options"] == "DENY", path
        assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
        assert "script-src 'self'" in CSP and "default-src 'none'" in CSP
        assert (
            fetch(server.port, "/static/app.js")
            .headers["Content-Type"]
            .startswith("text/javascript")
        )

    def test_read_only(self, server) -> None:
        """Anything but GET and HEAD is refused, and HEAD sends no body."""
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            reply = fetch(server.port, "/api/records", method=method)
            assert reply.status == 405, method
            assert reply.headers["Allow"] == "GET, HEAD"
        head = fetch(server.port, "/api/info", method="HEAD")
        assert head.status == 200 and head.body == b""

    def test_foreign_host_refused_without_token(self, server) -> None:
        """Without a token, a request naming a non-loopback host (DNS rebinding) is refused."""
        for host in ("evil.example:9465", "localhost.evil.example", "[", "127.0.0.1.nip.io"):
            assert fetch(server.port, "/api/info", headers={"Host": host}).status == 403, host
        for host in ("localhost:1", "127.0.0.1", "[::1]:9465"):
            assert fetch(server.port, "/api/info", headers={"Host": host}).status == 200, host

    def test_ipv6_loopback(self, recorded: Recorded) -> None:
        """It listens on ::1 as well, without a token."""
        browser = RecordBrowser(recorded.store, host="::1", port=0).start()
        try:
            assert browser.url == f"http://[::1]:{browser.port}/"
            conn = http.client.HTTPConnection("::1", browser.port, timeout=10)
            conn.request("GET", "/api/info")
            assert conn.getresponse().status == 200
            conn.close()
        finally:
            browser.close()

    def test_non_loopback_bind_needs_a_token(self) -> None:
        """Listening beyond loopback without a token is a configuration error."""
        for host in ("0.0.0.0", "::", "192.0.2.1", "example.com"):
            with pytest.raises(ConfigError, match="token"):
                check_token(host, None)
        with pytest.raises(ConfigError):
            check_token("0.0.0.0", "short")
        assert check_token("127.0.0.1", None) is None
        assert check_token("0.0.0.0", "t" * 16) == "t" * 16

    def test_token(self, recorded: Recorded) -> None:
        """With a token, nothing is served without it; ?token= trades it for an HttpOnly cookie."""
        token = secrets.token_urlsafe(24)
        browser = RecordBrowser(recorded.store, port=0, token=token).start()
        try:
            port = browser.port
            assert fetch(port, "/api/info").status == 401
            assert fetch(port, "/").status == 401
            assert fetch(port, "/", {"token": "x" * 32}).status == 401
            wrong = {"Authorization": "Bearer " + "x" * 32}
            assert fetch(port, "/api/info", headers=wrong).status == 401
            right = {"Authorization": f"Bearer {token}"}
            assert fetch(port, "/api/info", headers=right).status == 200
            swap = fetch(port, "/", {"token": token})
            assert swap.status == 303 and swap.headers["Location"] == "/"
            cookie = swap.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            jar = {"Cookie": cookie.split(";", 1)[0]}
            assert fetch(port, "/api/records", headers=jar).status == 200
            # With a token the Host check is not needed: the token is the gate.
            assert (
                fetch(port, "/api/info", headers={**right, "Host": "records.example"}).status == 200
            )
        finally:
            browser.close()

    def test_page_has_no_inline_code(self, server) -> None:
        """The page loads its script and style from files: nothing inline for the CSP to allow."""

        class Scan(HTMLParser):
            def __init__(self) -> None:
                super().__init__()
                self.problems: list[str] = []

            def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
                names = {k for k, _ in attrs}
                if tag == "script" and "src" not in names:
                    self.problems.append("inline script")
                if tag == "style" or "style" in names:
                    self.problems.append(f"inline style on {tag}")
                self.problems += [f"{k} on {tag}" for k in names if k.startswith("on")]

        scan = Scan()
        scan.feed(fetch(server.port, "/").body.decode())
        assert scan.problems == []

    def test_script_never_parses_html(self) -> None:
        """app.js builds the DOM from text only: no innerHTML, outerHTML, insertAdjacentHTML, eval."""
        source = resources.files("worker.browser").joinpath("static", "app.js").read_text()
        code = re.sub(r"//[^\n]*", "", source)
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, sink


class TestCommand:
    def test_serve(self, recorded: Recorded) -> None:
        """`intentus records serve` prints its address and serves the store's records."""
        with subprocess.Popen(
            [*SERVE, *recorded.cli_args, "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "INTENTUS_BROWSER_TOKEN": ""},
        ) as proc:
            try:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
                assert match, line
                page = fetch(int(match.group(1)), "/api/records").json()
                assert page["total"] == len(recorded.corpus.ids)
            finally:
                proc.terminate()
                proc.wait(timeout=10)

    def test_refuses_open_bind_without_token(self, recorded: Recorded) -> None:
        """Binding to all interfaces without a token exits 2 and says why."""
        env = {k: v for k, v in os.environ.items() if k != "INTENTUS_BROWSER_TOKEN"}
        done = subprocess.run(
            [*SERVE, *recorded.cli_args, "--host", "0.0.0.0", "--port", "0"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert done.returncode == 2
        assert "token" in done.stderr
