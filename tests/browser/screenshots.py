"""Re-take the README's screenshots of the record browser: `python -m tests.browser.screenshots docs`.

Records come from the real runtime with the test corpus's agents, in a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import chrome
from tests.browser.corpus import make_runtime, populate, registry
from worker.browser.server import RecordBrowser
from worker.cli.output import parse_since
from worker.cli.records import open_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    release = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        runtime, clock = make_runtime(registry(release), records_dir=tmp)
        try:
            corpus = populate(runtime, clock)
        finally:
            release.set()
            runtime.close()
        store = open_store(argparse.Namespace(records_dir=tmp))
        browser = RecordBrowser(store, port=0, parse_time=parse_since).start()
        driver = chrome.start(width=1360, height=900)
        try:
            for route, view, name, height in (
                ("", "list-view", "record-browser-list.png", 900),
                (
                    f"record?id={corpus.ids['fallback']}",
                    "record-view",
                    "record-browser-record.png",
                    1500,
                ),
            ):
                driver.set_window_size(1360, height)
                driver.get(browser.url + "#/" + route)
                WebDriverWait(driver, 15).until(lambda d, v=view: d.find_elements(By.ID, v))
                driver.save_screenshot(str(args.folder / name))
                print(args.folder / name)
        finally:
            driver.quit()
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
