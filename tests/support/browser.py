"""A real headless Chromium, driven over the DevTools protocol: open a page, run script in it, see its errors.

The system's `chromium` is started with a debugging port and a throwaway profile,
and spoken to over one websocket (CDP). Every call has a timeout, and the browser
and every process it started are killed on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import psutil

from tests.support.instance import wait_until_async

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CALL_S = 15.0  # no single CDP call (a navigation, an evaluation, a screenshot) takes longer on a busy 2-core CI


def chromium_binary() -> str | None:
    return next((found for name in BINARIES if (found := shutil.which(name))), None)


class BrowserError(AssertionError):
    """The page threw while evaluating, or the browser did not answer in time."""


class Page:
    """The browser's one tab. `errors` collects uncaught exceptions, console.error calls and the browser's own
    errors (a Content-Security-Policy violation) as they happen."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def call(self, method: str, timeout: float = CALL_S, **params: Any) -> dict:
        call_id = next(self._ids)
        future = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        try:
            reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise BrowserError(f"{method} got no answer in {timeout}s") from None
        finally:
            self._waiting.pop(call_id, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str, timeout: float = CALL_S) -> Any:
        """The value of a JavaScript expression (a promise is awaited), as JSON-able data."""
        result = await self.call("Runtime.evaluate", timeout, expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            thrown = details.get("exception", {}).get("description") or details
            raise BrowserError(f"{expression[:80]!r} threw: {thrown}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
                            what=f"{url} to load")

    async def wait_for(self, expression: str, timeout: float = 10.0, what: str = "") -> Any:
        """Poll an expression until it is truthy (the page updates as its stream tells it to)."""
        async def truthy() -> Any:
            return await self.evaluate(expression)
        return await wait_until_async(truthy, timeout=timeout, interval=0.05, what=what or expression)

    async def screenshot(self, path: Path) -> Path:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.get(data["id"])
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._event(data["method"], data.get("params", {}))
        for future in self._waiting.values():  # the browser went away: nobody waits out a timeout for nothing
            if not future.done():
                future.set_result({"error": "the browser closed its connection"})

    def _event(self, method: str, params: dict) -> None:
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded":
            entry = params["entry"]
            # The browser's own complaints, such as a Content-Security-Policy violation; a failed request
            # (source network) is the page's to handle.
            if entry["level"] == "error" and entry["source"] != "network":
                self.errors.append(f"{entry['source']}: {entry['text']}")


@contextlib.asynccontextmanager
async def chromium(width: int = 1360, height: int = 1000) -> AsyncIterator[Page]:
    """A headless Chromium with a fresh profile and its one page, Runtime and Page domains enabled."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("no chromium binary on PATH")
    profile = Path(tempfile.mkdtemp(prefix="lmforge-chromium-"))
    log = open(profile / "chromium.log", "wb")
    proc = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--no-proxy-server",
         "--disable-extensions", "--disable-background-networking", f"--window-size={width},{height}", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        start_new_session=True,  # its own process group: every helper process goes with it
    )
    try:
        port_file = profile / "DevToolsActivePort"

        def port() -> int | None:
            if proc.poll() is not None:
                said = (profile / "chromium.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"chromium exited with {proc.returncode}: {said}")
            lines = port_file.read_text().split() if port_file.exists() else []
            return int(lines[0]) if lines else None

        debug_port = await wait_until_async(port, timeout=30, what="chromium's DevToolsActivePort")
        async with aiohttp.ClientSession(trust_env=False) as http:  # each call below has its own timeout
            listing = f"http://127.0.0.1:{debug_port}/json"
            async with http.get(listing, timeout=aiohttp.ClientTimeout(total=CALL_S)) as resp:
                targets = await resp.json()
            target = next(t for t in targets if t["type"] == "page")
            connect = http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
            async with await asyncio.wait_for(connect, CALL_S) as ws:
                page = Page(ws)
                try:
                    await page.call("Runtime.enable")
                    await page.call("Log.enable")
                    await page.call("Page.enable")
                    yield page
                finally:
                    await page.close()
    finally:
        _kill(proc)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


def _kill(proc: subprocess.Popen) -> None:
    """Chromium and every process it started (zygotes, renderers, GPU and network services)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in family:  # any that left the process group
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait(timeout=10)
    psutil.wait_procs(family, timeout=10)
