"""A real headless Chromium (Debian's `chromium` package) driven over its DevTools protocol on a
websocket (aiohttp's client), for tests of the pages the daemon writes.

The browser gets a private profile, a proxy that leads nowhere (so no page could reach the
network even if it tried) and every request it makes is recorded, so a test can say the page
asked for nothing but itself.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp

NAMES = ("chromium", "chromium-browser", "google-chrome")
MISSING = ("no headless Chromium on this machine: install Debian's package with `apt-get "
           "install -y chromium` (scripts/test does it when run as root)")
# Guards hangs only: a browser that does not start or answer fails the test with its log.
START_TIMEOUT_S = 60
ANSWER_TIMEOUT_S = 30
# Alerts and other dialogs are recorded in window.__dialogs instead of blocking the page.
_DIALOG_TRAP = ("window.__dialogs = [];"
                "for (const name of ['alert', 'confirm', 'prompt']) {"
                "  window[name] = (m) => { window.__dialogs.push(name + ':' + String(m)); }; }")


def chromium() -> str | None:
    """The path of a Chromium-like browser, or None."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One browser tab: commands, the events seen so far, and what the page asked for."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self._ws = ws
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._news = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            payload = json.loads(message.data)
            answer = self._answers.pop(payload.get("id", -1), None)
            if answer is not None:
                answer.set_result(payload)
            elif "method" in payload:
                self.events.append(payload)
                self._news.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one DevTools command; its result (an error answer raises)."""
        key = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._answers[key] = answer
        await self._ws.send_json({"id": key, "method": method, "params": params})
        payload = await asyncio.wait_for(answer, ANSWER_TIMEOUT_S)
        if "error" in payload:
            raise RuntimeError(f"{method}: {payload['error']}")
        result: dict[str, Any] = payload.get("result", {})
        return result

    async def wait_event(self, method: str) -> dict[str, Any]:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            while True:
                for event in self.events:
                    if event["method"] == method:
                        return event
                self._news.clear()
                await self._news.wait()

    async def open(self, url: str) -> None:
        """Load `url` and wait for its load event."""
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.send(f"{domain}.enable")
        await self.send("Page.addScriptToEvaluateOnNewDocument", source=_DIALOG_TRAP)
        await self.send("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def click(self, selector: str) -> None:
        """A real left click (mouse events, as a user's) at the middle of `selector`."""
        x, y = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                            clickCount=1)

    async def _middle(self, selector: str) -> tuple[float, float]:
        x, y = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        return x, y

    async def wheel(self, selector: str, delta_y: float) -> None:
        """Turn the mouse wheel over the middle of `selector`."""
        x, y = await self._middle(selector)
        await self.send("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0,
                        deltaY=delta_y)

    async def drag(self, selector: str, dx: float, dy: float, steps: int = 5) -> None:
        """Press the left button at the middle of `selector`, move by (dx, dy), release."""
        x, y = await self._middle(selector)
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        await self.send("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y,
                        button="left", buttons=1, clickCount=1)
        for step in range(1, steps + 1):
            await self.send("Input.dispatchMouseEvent", type="mouseMoved", button="left",
                            buttons=1, x=x + dx * step / steps, y=y + dy * step / steps)
        await self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x + dx, y=y + dy,
                        button="left", buttons=0, clickCount=1)

    async def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        shot = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])

    def console_errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and browser errors (a blocked load, a
        policy violation) seen so far."""
        errors = []
        for event in self.events:
            params = event["params"]
            if event["method"] == "Runtime.exceptionThrown":
                errors.append(json.dumps(params["exceptionDetails"])[:500])
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] in (
                    "error", "assert"):
                errors.append(json.dumps(params["args"])[:500])
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"]["text"][:500])
        return errors

    def requested(self) -> list[str]:
        """Every URL the page asked for."""
        return [event["params"]["request"]["url"] for event in self.events
                if event["method"] == "Network.requestWillBeSent"]

    async def close(self) -> None:
        self._reader.cancel()
        with suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()


@asynccontextmanager
async def browser_page(profile: Path) -> AsyncIterator[Page]:
    """A tab of a fresh headless Chromium whose profile and log live in `profile`."""
    path = chromium()
    if path is None:
        raise RuntimeError(MISSING)
    profile.mkdir(parents=True, exist_ok=True)
    # A port left by an earlier browser on this profile would lead to nothing.
    (profile / "DevToolsActivePort").unlink(missing_ok=True)
    args = [path, "--headless=new", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--proxy-server=127.0.0.1:9", "--window-size=1280,900",
            f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium's own sandbox refuses to run as root
    log = (profile / "chromium.log").open("wb")
    process = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=log)
    try:
        port = await _debugging_port(profile, process)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            target = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"],
                                          max_msg_size=64 * 1024 * 1024) as ws:
                page = Page(ws)
                try:
                    yield page
                finally:
                    await page.close()
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _debugging_port(profile: Path, process: asyncio.subprocess.Process) -> int:
    """The port Chromium writes to DevToolsActivePort once it listens."""
    marker = profile / "DevToolsActivePort"
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            if process.returncode is not None:
                raise RuntimeError("chromium exited at start: "
                                   + (profile / "chromium.log").read_text(errors="replace"))
            lines = marker.read_text().splitlines() if marker.exists() else []
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
            await asyncio.sleep(0.05)
