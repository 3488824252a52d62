"""The record browser's page in headless Chromium: list, filters, timeline, escaping."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from runtime.query import is_indexed
from tests.browser.conftest import Recorded
from tests.browser.corpus import HOSTILE_ID, SCRIPT
from worker.browser.server import RecordBrowser

pytestmark = pytest.mark.timeout(180)


def show(driver: Any, server: RecordBrowser, route: str, view_id: str) -> Any:
    """Load the page afresh at `#/route` and wait until its view has rendered."""
    driver.get("about:blank")
    driver.get(server.url + "#/" + route)
    return wait_for(driver, view_id)


def until(driver: Any, condition: Any) -> Any:
    """Wait for `condition`; a view re-rendered under the check is retried, not an error."""
    return WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,)).until(
        condition
    )


def wait_for(driver: Any, element_id: str) -> Any:
    until(
        driver,
        lambda d: (
            d.find_elements(By.ID, element_id)
            and d.find_element(By.ID, "app").get_attribute("aria-busy") is None
        ),
    )
    return driver.find_element(By.ID, element_id)


def span(first: int, last: int, total: int) -> str:
    """The pager's text, `first` to `last` (en dash) `of total`."""
    return f"{first}\N{EN DASH}{last} of {total}"


def rows(driver: Any) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, "#records tbody tr")


def assert_no_alert(driver: Any) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - reading it is what raises


def csp_violations(driver: Any) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]


class TestList:
    def test_list_loads_newest_first(self, chrome, server, recorded: Recorded) -> None:
        """The list shows every record, newest first, with counts by status."""
        show(chrome, server, "", "list-view")
        listed = [r.get_attribute("data-id") for r in rows(chrome)]
        assert len(listed) == len(recorded.corpus.ids)
        assert listed[0] == recorded.corpus.ids["rejected"]
        assert chrome.find_element(By.ID, "range").text == span(1, len(listed), len(listed))
        counts = {
            c.get_attribute("data-status"): c.find_element(By.TAG_NAME, "b").text
            for c in chrome.find_elements(By.CSS_SELECTOR, "#counts .count")
        }
        assert counts == {"all": "14", "success": "10", "error": "4"}
        notes = [n.text for n in chrome.find_elements(By.ID, "scan-note")]
        if is_indexed(recorded.store):
            assert notes == []
        else:
            assert len(notes) == 1 and "every record" in notes[0]

    def test_filter_narrows(self, chrome, server, recorded: Recorded) -> None:
        """Typing an intent and applying the filter leaves only that intent's records."""
        show(chrome, server, "", "list-view")
        before = len(rows(chrome))
        chrome.find_element(By.ID, "f-intent").send_keys("SummarizeIntent")
        chrome.find_element(By.ID, "apply").click()
        until(
            chrome,
            lambda d: (
                d.find_elements(By.ID, "range")
                and d.find_element(By.ID, "range").text == span(1, 1, 1)
            ),
        )
        after = rows(chrome)
        assert before > len(after) == 1
        assert after[0].get_attribute("data-id") == recorded.corpus.ids["fallback"]
        assert "intent=SummarizeIntent" in chrome.current_url

    def test_status_count_filters(self, chrome, server) -> None:
        """Clicking a status count lists only records of that status."""
        show(chrome, server, "", "list-view")
        chrome.find_element(By.CSS_SELECTOR, "#counts [data-status=error]").click()
        until(
            chrome,
            lambda d: (
                d.find_elements(By.ID, "range")
                and d.find_element(By.ID, "range").text == span(1, 4, 4)
            ),
        )
        statuses = {r.find_elements(By.TAG_NAME, "td")[7].text for r in rows(chrome)}
        assert statuses == {"error"}

    def test_pages(self, chrome, server, recorded: Recorded) -> None:
        """older and newer step through the listing a page at a time, with no overlap."""
        show(chrome, server, "?limit=5", "list-view")
        first = [r.get_attribute("data-id") for r in rows(chrome)]
        assert chrome.find_element(By.ID, "range").text == span(1, 5, 14)
        chrome.find_element(By.ID, "older").click()
        until(chrome, lambda d: d.find_element(By.ID, "range").text == span(6, 10, 14))
        second = [r.get_attribute("data-id") for r in rows(chrome)]
        assert len(second) == 5 and not set(first) & set(second)
        chrome.find_element(By.ID, "newer").click()
        until(chrome, lambda d: d.find_element(By.ID, "range").text == span(1, 5, 14))
        assert [r.get_attribute("data-id") for r in rows(chrome)] == first

    def test_hostile_id_is_text(self, chrome, server, recorded: Recorded) -> None:
        """A requestId made of HTML shows as those characters, and creates no element."""
        show(chrome, server, "?" + urlencode({"q": HOSTILE_ID}), "list-view")
        cells = [td.text for td in chrome.find_elements(By.CSS_SELECTOR, "#records td")]
        assert HOSTILE_ID in cells
        assert chrome.find_elements(By.CSS_SELECTOR, "#app img") == []
        assert_no_alert(chrome)


class TestRecord:
    def test_fallback_timeline(self, chrome, server, recorded: Recorded) -> None:
        """A FALLBACK record draws both attempts, the failed one first, and one fallback mark."""
        show(chrome, server, f"record?id={recorded.corpus.ids['fallback']}", "record-view")
        attempts = chrome.find_elements(By.CSS_SELECTOR, "#timeline .attempt")
        assert [a.get_attribute("data-agent") for a in attempts] == ["primary", "backup"]
        assert [a.get_attribute("data-outcome") for a in attempts] == ["error", "success"]
        assert len(chrome.find_elements(By.CSS_SELECTOR, "#timeline .marker.fallback")) == 1
        summary = chrome.find_element(By.ID, "timeline-summary").text
        assert summary.startswith("2 attempts, 1 fallback, 0 abandoned")
        bars = [a.find_element(By.TAG_NAME, "rect") for a in attempts]
        first_end = float(bars[0].get_attribute("x")) + float(bars[0].get_attribute("width"))
        assert float(bars[1].get_attribute("x")) >= first_end  # drawn in time order, to scale

    def test_abandoned_and_timed_out(self, chrome, server, recorded: Recorded) -> None:
        """A PARALLEL straggler is drawn abandoned; an attempt past its deadline, timed out."""
        show(chrome, server, f"record?id={recorded.corpus.ids['parallel']}", "record-view")
        outcomes = [
            a.get_attribute("data-outcome")
            for a in chrome.find_elements(By.CSS_SELECTOR, "#timeline .attempt")
        ]
        assert outcomes == ["success", "abandoned"]
        show(chrome, server, f"record?id={recorded.corpus.ids['timeout']}", "record-view")
        outcomes = [
            a.get_attribute("data-outcome")
            for a in chrome.find_elements(By.CSS_SELECTOR, "#timeline .attempt")
        ]
        assert outcomes == ["timeout"]

    def test_script_payload_renders_as_text(self, chrome, server, recorded: Recorded) -> None:
        """A payload holding <script> is shown as text: no alert, no new element, no CSP breach."""
        chrome.get_log("browser")  # start from an empty console
        show(chrome, server, f"record?id={recorded.corpus.ids['script']}", "record-view")
        assert_no_alert(chrome)
        shown = [
            p for p in chrome.find_elements(By.CSS_SELECTOR, "#record-view pre") if SCRIPT in p.text
        ]
        assert shown and all(p.is_displayed() for p in shown)
        assert len(chrome.find_elements(By.TAG_NAME, "script")) == 1  # app.js alone
        assert chrome.find_elements(By.CSS_SELECTOR, "#app img") == []
        assert csp_violations(chrome) == []

    def test_sections_and_verify(self, chrome, server, recorded: Recorded) -> None:
        """The record shows its policy decision and stored reply; verify asks the server."""
        show(chrome, server, f"record?id={recorded.corpus.ids['fallback']}", "record-view")
        text = chrome.find_element(By.ID, "record-view").text
        assert "primary → backup" in text  # the try order
        assert "fallback_attempt" in text  # the router's reason
        reply = chrome.find_element(By.CSS_SELECTOR, "pre.reply").text
        assert reply == recorded.corpus.replies["fallback"].decode()
        chrome.find_element(By.ID, "verify").click()
        until(chrome, lambda d: d.find_element(By.ID, "verify-result").text.startswith("ok"))

    def test_policy_reasons(self, chrome, server, recorded: Recorded) -> None:
        """The agents policy filtered out are listed with the rule that filtered them."""
        show(chrome, server, f"record?id={recorded.corpus.ids['direct']}", "record-view")
        cells = [
            td.text for td in chrome.find_elements(By.CSS_SELECTOR, "#policy-reasons tbody td")
        ]
        assert cells == ["audit", "denied by rule 'no-audit'"]

    def test_diff_from_a_record(self, chrome, server, recorded: Recorded) -> None:
        """The record's diff link opens both records side by side with their differences."""
        show(chrome, server, f"record?id={recorded.corpus.ids['direct']}", "record-view")
        chrome.find_element(By.ID, "diff-other").send_keys("req-bulk-1")
        chrome.find_element(By.ID, "diff-link").click()
        wait_for(chrome, "diff-view")
        paths = [td.text for td in chrome.find_elements(By.CSS_SELECTOR, "#differences td.path")]
        assert "header.requestId" in paths
        row = chrome.find_elements(By.CSS_SELECTOR, "#differences tbody tr")[
            paths.index("header.requestId")
        ]
        assert [td.text for td in row.find_elements(By.TAG_NAME, "td")[1:]] == [
            '"req-direct"',
            '"req-bulk-1"',
        ]

    def test_unknown_record(self, chrome, server) -> None:
        """An unknown id says so instead of showing an empty record."""
        chrome.get("about:blank")
        chrome.get(server.url + "#/record?id=nothing-here")
        wait_for(chrome, "error")
        assert "no record" in chrome.find_element(By.ID, "error").text
