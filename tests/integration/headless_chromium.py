"""A tiny DevTools-protocol client for the browser tests: Debian's `chromium`, headless, driven over
its loopback DevTools WebSocket (`--remote-debugging-port=0`; the port is read from the profile's
`DevToolsActivePort` file).

`Page.load(url)` navigates one tab and records what a person would see go wrong: console errors,
uncaught exceptions, failed loads (`Log`, `Runtime`, `Network` events), and every URL the page
requested. Any host other than 127.0.0.1 resolves to nothing (`--host-resolver-rules`), so a page
that needs the internet shows it as a failed request and a console error.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium")
SKIP_REASON = "Debian's chromium is not installed (bash infra/local/services.sh start installs it)"


class DevTools:
    """One DevTools connection to the browser; commands to a page go with its `session_id`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout_s: float = 30.0) -> dict[str, Any]:  # fmt: skip
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._receive(deadline - time.monotonic(), method)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_event(self, method: str, *, session: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """The first event `method` of the session not yet taken (earlier ones are kept)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session and not event.get("_taken"):
                    event["_taken"] = True
                    return event
            seen = len(self.events)
            self.events.append(self._receive(deadline - time.monotonic(), method))

    def _receive(self, timeout_s: float, waiting_for: str) -> dict[str, Any]:
        if timeout_s <= 0:
            raise TimeoutError(f"chromium did not answer {waiting_for} in time")
        reply: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout_s))
        return reply


class Page:
    """One tab: `load(url)`, `evaluate(js)`, `screenshot()`, and what went wrong while loading."""

    def __init__(self, tools: DevTools, session: str) -> None:
        self.tools = tools
        self.session = session

    def load(self, url: str, *, timeout_s: float = 60.0) -> None:
        self.tools.send("Page.navigate", {"url": url}, session=self.session)
        self.tools.wait_event("Page.loadEventFired", session=self.session, timeout_s=timeout_s)

    def evaluate(self, expression: str, *, timeout_s: float = 60.0) -> Any:
        """The value of a JS expression (a promise is awaited)."""
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        result = self.tools.send("Runtime.evaluate", params, session=self.session, timeout_s=timeout_s)
        if "exceptionDetails" in result:
            raise RuntimeError(f"the page threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, timeout_s: float = 60.0) -> Any:
        """Poll a JS expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} stayed falsy for {timeout_s} s")
            time.sleep(0.2)

    def screenshot(self) -> bytes:
        data = self.tools.send("Page.captureScreenshot", {"format": "png"}, session=self.session)["data"]
        return base64.b64decode(data)

    def _events(self, method: str) -> list[dict[str, Any]]:
        return [
            e["params"] for e in self.tools.events if e.get("method") == method and e.get("sessionId") == self.session
        ]

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads, as readable lines."""
        out = [f"console.{p['type']}: {p.get('args')}" for p in self._events("Runtime.consoleAPICalled")
               if p["type"] in ("error", "assert")]  # fmt: skip
        out += [f"exception: {p['exceptionDetails']}" for p in self._events("Runtime.exceptionThrown")]
        out += [f"log {p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}"
                for p in self._events("Log.entryAdded") if p["entry"].get("level") == "error"]  # fmt: skip
        out += [
            f"failed load: {p.get('errorText')} ({p.get('requestId')})" for p in self._events("Network.loadingFailed")
        ]
        return out

    def requested_urls(self) -> list[str]:
        return [p["request"]["url"] for p in self._events("Network.requestWillBeSent")]


@contextmanager
def chromium_page(*, width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A headless chromium with one tab (its console, log, network and page events on)."""
    if CHROMIUM is None:
        raise RuntimeError(SKIP_REASON)
    tmp = tempfile.mkdtemp(prefix="chromium-")
    try:
        profile, log = Path(tmp) / "profile", Path(tmp) / "chromium.log"
        cmd = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--window-size={width},{height}",
            "about:blank",
        ]  # fmt: skip
        with log.open("wb") as sink:  # its own process group: its helper processes end with it
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"chromium did not start its DevTools endpoint: {err}")
                time.sleep(0.05)
            port, path = port_file.read_text().splitlines()[:2]
            with connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 1024 * 1024) as ws:
                tools = DevTools(ws)
                target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
                session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
                for domain in ("Page", "Runtime", "Log", "Network"):
                    tools.send(f"{domain}.enable", session=session)
                yield Page(tools, session)
        finally:
            _stop_group(proc)
    finally:
        _remove_profile(Path(tmp))


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """End chromium and every helper process it started (renderer, crashpad, utilities)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _remove_profile(folder: Path, timeout_s: float = 10.0) -> None:
    """Remove the profile folder. A helper may still be writing into it for a moment after the
    browser process has gone (a CI run failed on "Directory not empty"), so retry until it stops."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            shutil.rmtree(folder)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
