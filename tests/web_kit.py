"""Helpers for the console tests: a webhook receiver on 127.0.0.1 and one headless Debian
Chromium driven by Selenium through Debian's chromedriver (never a downloaded browser)."""
from __future__ import annotations

import http.server
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)),
                None)
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1360,900")


def browser_missing() -> str | None:
    if not CHROMIUM or not CHROMEDRIVER:
        return ("Debian's chromium and chromium-driver are not installed (make setup installs them "
                "as root: apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make setup)"
    return None


@contextmanager
def chromium(profile: Path, downloads: Path) -> Iterator["object"]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never fetches a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument("--user-data-dir=%s" % profile)
    downloads.mkdir(parents=True, exist_ok=True)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        drv.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow",
                                                         "downloadPath": str(downloads)})
        drv.set_page_load_timeout(60)
        yield drv
    finally:
        drv.quit()


def wait_until(pred, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
        except Exception:  # noqa: BLE001 - a page mid-update
            v = None
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(every)


class Receiver:
    """A webhook receiver on 127.0.0.1 that refuses the first `fail` requests; keeps the rest
    with the time each arrived."""

    def __init__(self, fail: int = 0):
        self.got: list[tuple[dict, bytes, float]] = []
        self.fail = fail
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(503)
                else:
                    outer.got.append((dict(self.headers), body, time.monotonic()))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d/hook" % self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()
