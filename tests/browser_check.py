"""Open a mechscope report in headless Chromium and check what a reader would see.

Drives Chromium through the DevTools protocol over a pipe (``--remote-debugging-pipe``), so
it needs nothing beyond the standard library and a Chromium binary. It checks that every image
decodes (``naturalWidth > 0`` after ``img.decode()``), that no console error, uncaught
exception or failed load is logged, and that the page has the section anchors asked for, in
that order; then it writes a full-page screenshot.

    python -m tests.browser_check REPORT.html --screenshot .ci-artifacts/report.png \\
        --sections quickstart-suite,quickstart-compare,quickstart-mechanism

Exit status 0 when every check passes; otherwise each failure is printed and the status is 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs in the page once it has loaded: decode every image, list the anchors in order.
_INSPECT = """
(async () => {
  const images = await Promise.all([...document.images].map(async (img, index) => {
    let error = null;
    try { await img.decode(); } catch (e) { error = String(e); }
    return {index, alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, error};
  }));
  const anchors = [...document.querySelectorAll('[id]')].map(e => e.id);
  const external = [...document.querySelectorAll('[src],link[href],script[src]')]
    .map(e => e.getAttribute('src') || e.getAttribute('href'))
    .filter(u => u && !u.startsWith('data:') && !u.startsWith('#'));
  return {images, anchors, external, scripts: document.scripts.length,
          title: document.title,
          height: document.documentElement.scrollHeight,
          width: document.documentElement.scrollWidth};
})()
"""


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH (or $CHROMIUM), or None."""
    chosen = os.environ.get("CHROMIUM")
    if chosen:
        return shutil.which(chosen) or chosen
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _Pipe:
    """A minimal DevTools client: JSON messages separated by NUL bytes over two pipes."""

    def __init__(self, browser: str, profile: str) -> None:
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()
        arguments = [
            browser,
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",  # CI containers run as root, where the sandbox cannot start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        # posix_spawn, not fork: forking a process that runs JAX's threads can deadlock. The
        # protocol reads commands from fd 3 and writes replies to fd 4.
        self.pid = os.posix_spawn(
            browser,
            arguments,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, to_browser_read, 3),
                (os.POSIX_SPAWN_DUP2, from_browser_write, 4),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Send one command and wait for its reply (events meanwhile are kept)."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for an event (one already received counts)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._receive(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _receive(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the browser did not answer in time")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise RuntimeError("the browser closed the DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        """Ask the browser to quit, and make sure it does."""
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.1)
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass


def _problems(events: Sequence[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the page's events."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            found.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append(f"uncaught exception: {details.get('text', '')} {details}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"{entry.get('source')} error: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed":
            found.append(f"failed load: {params.get('errorText')}")
    return found


def inspect_report(
    report: Path, *, browser: str, screenshot: Path | None = None, width: int = 1280
) -> dict[str, Any]:
    """Load `report` in headless Chromium; return what the page holds and what went wrong.

    Returns:
        ``images`` (one dict per <img>: alt, natural width and height, decode error),
        ``anchors`` (every element id, in document order), ``external`` (URLs the page would
        fetch), ``problems`` (console errors and failed loads), ``height``, ``width``.
    """
    with tempfile.TemporaryDirectory(prefix="mechscope-chromium-") as profile:
        pipe = _Pipe(browser, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            pipe.send("Page.navigate", {"url": report.resolve().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout=120)
            result = pipe.send(
                "Runtime.evaluate",
                {"expression": _INSPECT, "awaitPromise": True, "returnByValue": True},
                session=session,
                timeout=120,
            )
            if "exceptionDetails" in result:
                raise RuntimeError(f"inspection failed: {result['exceptionDetails']}")
            found = result["result"]["value"]
            if screenshot is not None:
                shot = pipe.send(
                    "Page.captureScreenshot",
                    {"format": "png", "captureBeyondViewport": True, "fromSurface": True},
                    session=session,
                    timeout=300,
                )
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            found["problems"] = _problems(pipe.events)
            return found
        finally:
            pipe.close()


def check(found: dict[str, Any], sections: Sequence[str]) -> list[str]:
    """Every failed expectation about an inspected page, as one line each."""
    failures = []
    if not found["images"]:
        failures.append("the page has no images")
    for image in found["images"]:
        if image["error"] or not image["width"]:
            failures.append(f"image {image['index']} ({image['alt']!r}) does not decode")
    failures += found["problems"]
    if found["external"]:
        failures.append(f"the page is not self-contained; it fetches {found['external'][:5]}")
    positions = []
    for section in sections:
        if section not in found["anchors"]:
            failures.append(f"section anchor #{section} is missing")
        else:
            positions.append(found["anchors"].index(section))
    if positions != sorted(positions):
        failures.append(f"sections out of order: {[found['anchors'][p] for p in positions]}")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: check one report, print a summary, exit 1 on any failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument(
        "--sections", default="", help="comma-separated anchors that must exist, in this order"
    )
    arguments = parser.parse_args(argv)
    browser = find_chromium()
    if browser is None:
        print("browser check: no Chromium found (install chromium)", file=sys.stderr)
        return 1
    if not arguments.report.is_file():
        print(f"browser check: {arguments.report}: no such file", file=sys.stderr)
        return 1
    sections = [s for s in arguments.sections.split(",") if s]
    found = inspect_report(arguments.report, browser=browser, screenshot=arguments.screenshot)
    failures = check(found, sections)
    print(
        f"browser check: {arguments.report}: {len(found['images'])} images, "
        f"{len(found['anchors'])} anchors, page {found['width']}×{found['height']} px"
        + (f", screenshot {arguments.screenshot}" if arguments.screenshot else "")
    )
    for failure in failures:
        print(f"  FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
