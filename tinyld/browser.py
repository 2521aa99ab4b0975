"""Open a page in a real headless browser (Chromium, as Debian packages it) and report what happened: what the page
asked of the network, the script errors, the values of a few DOM queries, and a screenshot if asked.

The browser is driven over the DevTools protocol through a pipe (``--remote-debugging-pipe``: JSON messages, each
ended by a NUL byte, on file descriptors 3 and 4), so nothing listens on a port and nothing beyond the standard
library is needed. :func:`find_browser` says which browser is installed, or None.

Used by the test that checks ``explain``'s report renders, and to take the screenshot of a real report in the
README (:func:`visit` with ``screenshot=``)."""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tinyld.runtime import TinyldError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    """The path of an installed Chromium-family browser, or None."""
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class _Pipe:
    """A DevTools session over the browser's pipe: send a command, read messages until its answer, keeping every
    event seen on the way."""

    def __init__(self, proc, to_browser: int, from_browser: int, timeout: float):
        self.proc, self.w, self.r, self.timeout = proc, to_browser, from_browser, timeout
        self.buf, self.events, self.next_id = b"", [], 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self.read()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise TinyldError(f"the browser refused {method}: {m['error'].get('message')}")
                return m.get("result", {})
            self.events.append(m)

    def read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self.buf:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TinyldError("the browser stopped answering" if self.proc.poll() is None else
                                  f"the browser exited (status {self.proc.returncode})")
            if not select.select([self.r], [], [], min(1.0, max(0.0, deadline - time.monotonic())))[0]:
                continue  # nothing yet: check the deadline and the process again
            chunk = os.read(self.r, 1 << 16)
            if not chunk:
                raise TinyldError("the browser closed its pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, method: str) -> dict:
        for m in self.events:
            if m.get("method") == method:
                return m
        while True:
            m = self.read()
            self.events.append(m)
            if m.get("method") == method:
                return m


def visit(page: str | Path, queries: dict[str, str] | None = None, screenshot: str | Path | None = None,
          width: int = 1100, height: int = 900, full_page: bool = False, element: str | None = None,
          browser: str | None = None, timeout: float = 60.0) -> dict:
    """Load ``page`` (a local HTML file) in a headless browser, evaluate each JavaScript expression of ``queries``
    once it has loaded, and return ``{"requests": [URLs other than the page], "errors": [script errors and console
    errors], "values": {name: value}}``; with ``screenshot``, also write a PNG there: the first ``width`` × ``height``
    pixels, the whole page with ``full_page``, or only the element that the CSS selector ``element`` finds."""
    page = Path(page).resolve()
    if not page.is_file():
        raise TinyldError(f"no page at {page}")
    exe = browser or find_browser()
    if exe is None:
        raise TinyldError(f"no headless browser found (looked for {', '.join(BROWSERS)}); on Debian: apt-get install "
                          "chromium")
    with tempfile.TemporaryDirectory() as profile:
        proc, w1, r2 = _launch(exe, profile, width, height)
        cdp = _Pipe(proc, w1, r2, timeout)
        try:
            target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
            s = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Network", "Runtime", "Log"):
                cdp.call(f"{domain}.enable", session=s)
            cdp.events.clear()
            cdp.call("Page.navigate", session=s, url=page.as_uri())
            cdp.wait_for("Page.loadEventFired")
            values = {name: cdp.call("Runtime.evaluate", session=s, expression=js, returnByValue=True)
                      ["result"].get("value") for name, js in (queries or {}).items()}
            if screenshot is not None:
                Path(screenshot).write_bytes(_screenshot(cdp, s, element, full_page))
            cdp.call("Browser.close")
        finally:
            os.close(w1)
            os.close(r2)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    requests = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
    errors = [e["params"]["exceptionDetails"].get("text", "") for e in cdp.events
              if e.get("method") == "Runtime.exceptionThrown"]
    errors += [e["params"]["entry"].get("text", "") for e in cdp.events
               if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"]
    errors += [str(e["params"].get("args")) for e in cdp.events
               if e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error"]
    return {"requests": [u for u in requests if u != page.as_uri()], "errors": errors, "values": values}


def _launch(exe: str, profile: str, width: int, height: int):
    """Start the browser headless with its DevTools pipe on its fds 3 (in) and 4 (out); (process, our write end, our
    read end)."""
    r1, w1 = os.pipe()  # we write, the browser reads (its fd 3)
    r2, w2 = os.pipe()  # the browser writes (its fd 4), we read

    def fds():  # in the child, before exec: the pipe ends at 3 and 4 (copied first, so neither overwrites the other)
        a, b = os.dup(r1), os.dup(w2)
        os.dup2(a, 3)
        os.dup2(b, 4)
    proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-extensions", "--disable-background-networking", "--disable-sync",
                             "--no-default-browser-check", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                             f"--window-size={width},{height}", "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=fds, pass_fds=(3, 4))  # kept open in the child
    os.close(r1)
    os.close(w2)
    return proc, w1, r2


def _screenshot(cdp: _Pipe, session: str, element: str | None, full_page: bool) -> bytes:
    """A PNG of the viewport, of the whole page (``full_page``) or of the element the selector ``element`` finds."""
    clip = {}
    if element is not None:  # the element's box, in page coordinates
        box = cdp.call("Runtime.evaluate", session=session, returnByValue=True, expression=(
            f"(() => {{const e = document.querySelector({json.dumps(element)}); if (!e) return null; "
            "const r = e.getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.width, r.height]})()"
        ))["result"].get("value")
        if box is None:
            raise TinyldError(f"no element {element!r} on the page to take a screenshot of")
        clip = {"clip": dict(zip(("x", "y", "width", "height"), box), scale=1)}
    shot = cdp.call("Page.captureScreenshot", session=session, format="png",
                    captureBeyondViewport=full_page or bool(clip), **clip)
    return base64.b64decode(shot["data"])
