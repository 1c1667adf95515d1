"""A small headless-Chromium client for the tests, on the standard library only.

It speaks the Chrome DevTools Protocol over ``--remote-debugging-pipe``: Chromium reads commands on its
file descriptor 3 and writes replies and events on 4, each message one JSON object ended by a NUL byte
(https://chromedevtools.github.io/devtools-protocol/). One page at a time: ``open(url)`` creates a tab,
navigates, waits for the ``load`` event and returns what a reader would see (title, headings, links and,
for every ``<img>``, whether it finished loading and its decoded size; every MathML ``<math>`` element and
how the browser lays it out; every ``<details>``; the page's text; and every address the page asked for).

Every host name resolves to nothing (``--host-resolver-rules``), so a page can only use what it carries or
what lies beside it on disk: the course book must show its figures offline.

    with Chromium() as browser:
        page = browser.open(Path("build/index.html").as_uri())
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["Chromium", "BrowserError", "find_chromium"]

# Flags: no sandbox (CI containers run as root), no GPU, and nothing that phones home.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND")

# What a page looks like once loaded; evaluated in the page, returned by value.
PAGE_STATE = """(() => ({
    url: location.href,
    readyState: document.readyState,
    title: document.title,
    headings: [...document.querySelectorAll('h1')].map(h => h.textContent.trim()),
    links: [...document.querySelectorAll('a[href]')].map(a => ({href: a.href, text: a.textContent.trim(),
        rel: a.rel})),
    math: [...document.querySelectorAll('math')].map(m => ({display: getComputedStyle(m).display,
        width: m.getBoundingClientRect().width, text: m.textContent.slice(0, 40)})),
    details: [...document.querySelectorAll('details')].map(d => ({open: d.open,
        summary: (d.querySelector('summary') || {textContent: ''}).textContent.trim()})),
    text: document.body ? document.body.innerText : '',
    images: [...document.images].map(i => ({
        complete: i.complete, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
        shownWidth: i.getBoundingClientRect().width, src: i.currentSrc.slice(0, 40)})),
}))()"""

# Resolves once the document and everything it loads (images included) are done.
WAIT_FOR_LOAD = """new Promise(resolve => {
    if (document.readyState === 'complete') resolve(true);
    else window.addEventListener('load', () => resolve(true), {once: true});
})"""


class BrowserError(RuntimeError):
    """Chromium failed, timed out, or a page could not be loaded."""


def find_chromium() -> str | None:
    """Debian's ``chromium`` (or ``chromium-browser``, ``google-chrome``) on PATH, else None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """Headless Chromium driven over a DevTools pipe. Use as a context manager; ``close()`` ends it.

    Args:
        executable: the browser (default: ``find_chromium()``).
        timeout: seconds allowed for each command, a page load included.
    """

    def __init__(self, executable: str | None = None, timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError("Chromium is not installed (Debian: apt-get install chromium)")
        self.timeout = timeout
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict] = []        # every event received, in order (Runtime.exceptionThrown, ...)
        self._profile = tempfile.mkdtemp(prefix="course-chromium-")
        self._log = open(Path(self._profile) / "chromium.log", "w+b")
        to_browser_r, self._to_browser = os.pipe()       # we write commands, Chromium reads them as fd 3
        self._from_browser, from_browser_w = os.pipe()   # Chromium writes fd 4, we read

        def as_fds_3_and_4():   # in the child, before exec: only dup calls (async-signal-safe)
            r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)   # copies above 4 first, so that
            w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)  # neither end is overwritten
            os.dup2(r, 3)
            os.dup2(w, 4)

        args = [self.executable, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
                "about:blank"]
        try:
            self.proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=as_fds_3_and_4,
                                         stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        try:
            self.version = self.send("Browser.getVersion")["product"]
        except BrowserError:
            self.close()
            raise

    # -- the protocol --------------------------------------------------------------------------------
    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Send one command (to a page when ``session`` is given) and return its result."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._to_browser, data):]
        except BrokenPipeError:
            raise BrowserError(f"Chromium exited while sending {method}:\n{self.log_tail()}") from None
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def _read(self, deadline: float, method: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError(f"no reply to {method} within {self.timeout:.0f} s:\n{self.log_tail()}")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium exited while waiting for {method}:\n{self.log_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, session: str, expression: str):
        """The value of a JavaScript expression in the page (a Promise is awaited)."""
        r = self.send("Runtime.evaluate", session, expression=expression, awaitPromise=True,
                      returnByValue=True, timeout=int(self.timeout * 1000))
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression[:60]!r} threw: {r['exceptionDetails'].get('text')} "
                               f"{r['exceptionDetails'].get('exception', {}).get('description', '')}")
        return r["result"].get("value")

    # -- pages ---------------------------------------------------------------------------------------
    def open(self, url: str) -> dict:
        """Load ``url`` in a new tab, wait for its ``load`` event, and describe it (see ``PAGE_STATE``).

        Returns:
            ``{"url", "readyState", "title", "headings", "links", "images", "math", "details", "text",
            "exceptions", "requests", "seconds"}``, where ``exceptions`` lists the uncaught JavaScript errors
            the page threw while loading and ``requests`` every URL it asked for (the page's own included).

        Raises:
            BrowserError: the navigation failed (a missing file, a refused address) or timed out.
        """
        t0 = time.perf_counter()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            self.send("Runtime.enable", session)
            self.send("Network.enable", session)
            first_event = len(self.events)
            nav = self.send("Page.navigate", session, url=url)
            if nav.get("errorText"):
                raise BrowserError(f"{url} did not load: {nav['errorText']}")
            self.evaluate(session, WAIT_FOR_LOAD)
            state = self.evaluate(session, PAGE_STATE)
            state["exceptions"] = [
                e["params"]["exceptionDetails"].get("exception", {}).get("description")
                or e["params"]["exceptionDetails"].get("text")
                for e in self.events[first_event:]
                if e.get("sessionId") == session and e["method"] == "Runtime.exceptionThrown"]
            state["requests"] = [e["params"]["request"]["url"] for e in self.events[first_event:]
                                 if e.get("sessionId") == session and e["method"] == "Network.requestWillBeSent"]
            state["seconds"] = time.perf_counter() - t0
            return state
        finally:
            self.send("Target.closeTarget", targetId=target)

    def log_tail(self, n: int = 2000) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close")
            except BrowserError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
