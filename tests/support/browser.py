"""Real headless Chromium for tests, driven over the Chrome DevTools Protocol (websocket-client).

    with browser.chromium(tmp_path) as page:       # skips (or fails under CI=true) without a browser
        page.navigate("http://127.0.0.1:8080/")
        page.wait_for("document.querySelectorAll('svg').length > 0")
        page.screenshot(ARTIFACTS / "dashboard.png")
        assert page.console_errors() == []

Debian's ``chromium`` is used; when /usr/bin/chromium is missing and we run as root it is installed
once with apt-get (never a browser download of its own). Every launch gets a fresh --user-data-dir and
the flags that keep it off the network.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
    "--remote-allow-origins=*", "--hide-scrollbars", "--remote-debugging-port=0",
)  # fmt: skip
_install_lock = threading.Lock()
_install_result: list[str | None] = []


def _install() -> str | None:
    """Install Debian's chromium once (as root); return None on success or why it failed."""
    with _install_lock:
        if _install_result:
            return _install_result[0]
        reason: str | None = None
        if os.geteuid() != 0:
            reason = f"{CHROMIUM} is missing and installing it needs root (apt-get install chromium)"
        else:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            try:
                for command in (
                    ["apt-get", "update"],
                    ["apt-get", "install", "-y", "chromium", "chromium-driver"],
                ):
                    subprocess.run(command, check=True, env=env, capture_output=True, timeout=600)
            except (subprocess.SubprocessError, OSError) as error:
                reason = f"could not install chromium with apt-get: {error}"
            if reason is None and not Path(CHROMIUM).exists():
                reason = f"apt-get installed chromium but {CHROMIUM} is still missing"
        _install_result.append(reason)
        return reason


def require_chromium() -> str:
    """Return the browser's path; install it when possible, else skip (outside CI) or fail (CI=true)."""
    if not Path(CHROMIUM).exists():
        reason = _install()
        if reason is not None:
            if IN_CI:
                pytest.fail(f"{reason}; under CI=true the browser tests must run", pytrace=False)
            pytest.skip(reason)
    return CHROMIUM


class CdpError(RuntimeError):
    """The browser answered a DevTools command with an error."""


class Page:
    """One browser tab over a DevTools websocket: commands, events and a few conveniences."""

    def __init__(self, ws_url: str, *, timeout: float = 30.0) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._id = 0
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events seen meanwhile are kept in ``events``."""
        self._id += 1
        wanted = self._id
        self.ws.send(json.dumps({"id": wanted, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == wanted:
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)
        raise TimeoutError(f"no answer to {method} within {self.timeout} s")

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (awaiting promises) and return its JSON value."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(
                f"{expression!r} threw: {result['exceptionDetails'].get('text')}"
                f" {result['exceptionDetails'].get('exception', {}).get('description', '')}"
            )
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float = 15.0, interval: float = 0.1) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"{expression!r} stayed falsy for {timeout} s (last value {value!r})")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def console_errors(self) -> list[str]:
        """Return console errors, uncaught exceptions and error log entries seen so far."""
        self.evaluate("1")  # drain pending events
        out = []
        for e in self.events:
            method, params = e["method"], e.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append(
                    f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')}"
                )
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(
                    "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                out.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        return out

    def screenshot(self, path: Path, *, width: int = 1200, height: int | None = None) -> Path:
        """Save a PNG of the page (the whole document height unless ``height`` is given)."""
        full = height or int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or 800)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=min(full, 16000),
            deviceScaleFactor=1,
            mobile=False,
        )
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.ws.close()


@contextmanager
def chromium(tmp_path: Path, *, timeout: float = 30.0) -> Iterator[Page]:
    """Launch headless Chromium with a fresh profile and yield one page; the browser is killed afterwards."""
    binary = require_chromium()
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    profile.mkdir(parents=True)
    process = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    page: Page | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {process.returncode} before it listened")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as response:
            targets = json.loads(response.read())
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        page = Page(ws_url, timeout=timeout)
        yield page
    finally:
        if page is not None:
            page.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
