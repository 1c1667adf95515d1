"""The Hugging Face Hub, asked with a deadline. Pretrained models load the real way
(``from_pretrained(hub_id)``) where the Hub answers, and nothing in the course waits on a network that
does not: a captive portal or a broken proxy accepts connections and never answers, and left to itself
transformers then waits 10 s per request, for several requests and retries.

- ``offline_env()``: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set (tests and CI set it).
- ``hub_answers(repo_id, timeout_s)``: one real HTTP request (a HEAD of the repository's ``config.json`` at
  ``$HF_ENDPOINT``, default https://huggingface.co), run in a daemon thread and given up after
  ``timeout_s`` seconds, whatever the DNS lookup, the connection or the server does.
- ``in_hub_cache(repo_id)``: a copy in the local Hugging Face cache (no network).
- ``bounded_hub_timeouts()``: huggingface_hub's own per-request timeouts, while ``from_pretrained`` runs.
- ``with_deadline(load, repo_id)``: the whole load in a daemon thread, given up when nothing arrives in the
  local cache for ``stall_s`` seconds or after ``deadline_s`` in all. This bounds every request the
  libraries make, including the ones no timeout setting reaches: transformers 5 asks
  ``HfApi.model_info`` with ``timeout=None``, which a Hub that answers once and then holds its connections
  kept waiting for minutes (reliability review 2026-12, F2).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.error
import urllib.request

__all__ = ["offline_env", "endpoint", "hub_answers", "in_hub_cache", "bounded_hub_timeouts", "HubTimeout",
           "with_deadline"]

REQUEST_TIMEOUT_S = 10          # huggingface_hub's per-request timeout while a model downloads
STALL_S = 30                    # a load with nothing new in the cache for this long is given up


def offline_env() -> bool:
    """Is the Hub switched off by the environment (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)?"""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def endpoint() -> str:
    """The Hub's address: ``$HF_ENDPOINT`` (a mirror), else https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_answers(repo_id: str, timeout_s: float = 1.5) -> tuple[bool, str]:
    """Does the Hub answer an HTTP request for ``repo_id`` within ``timeout_s`` seconds?

    Any HTTP answer counts (200, a redirect, 401 for a gated model): the Hub is there. No answer in time,
    a refused connection or a failed DNS lookup does not.

    Returns:
        (answered, why): ``why`` says what happened, for the error message.
    """
    if offline_env():
        return False, "HF_HUB_OFFLINE is set"
    url = f"{endpoint()}/{repo_id}/resolve/main/config.json"
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "noise-to-digits"})
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                result.append((True, f"HTTP {r.status}"))
        except urllib.error.HTTPError as e:                      # an answer, e.g. 401 or 404
            result.append((True, f"HTTP {e.code}"))
        except Exception as e:                                   # timeout, refused, DNS, TLS
            timed_out = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError)
            result.append((False, "timeout" if timed_out else f"{type(e).__name__}: {e}"))

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    if not result:
        return False, f"{endpoint()} did not answer within {timeout_s:g} s"
    ok, why = result[0]
    if why == "timeout":
        return False, f"{endpoint()} did not answer within {timeout_s:g} s"
    return ok, (why if ok else f"{endpoint()} could not be reached ({why[:120]})")


def in_hub_cache(repo_id: str) -> bool:
    """Is ``repo_id`` in the local Hugging Face cache? (huggingface_hub only: no network, no transformers)"""
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


@contextlib.contextmanager
def bounded_hub_timeouts(seconds: float = REQUEST_TIMEOUT_S):
    """Inside: huggingface_hub gives up a request that gets no answer for ``seconds`` (its metadata and
    download timeouts; a download that keeps receiving data goes on)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    saved = constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT
    constants.HF_HUB_ETAG_TIMEOUT = constants.HF_HUB_DOWNLOAD_TIMEOUT = seconds
    try:
        yield
    finally:
        constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT = saved


class HubTimeout(TimeoutError):
    """A load from the Hub was given up: no progress for ``stall_s`` seconds, or past its whole deadline."""


def _cache_bytes(repo_id: str) -> int:
    """Bytes in the local cache's folder for ``repo_id`` (finished and half-downloaded files): the progress."""
    try:
        from huggingface_hub import constants
        folder = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    except ImportError:
        return 0
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def with_deadline(load, repo_id: str, deadline_s: float, stall_s: float | None = None, poll_s: float = 0.25):
    """``load()`` (which asks the Hub for ``repo_id``), given up when it is stalled or too long.

    It runs in a daemon thread under ``bounded_hub_timeouts``. Every ``poll_s`` seconds the local cache's
    folder for ``repo_id`` is measured, and this process's CPU time: a download that keeps receiving data
    goes on, and so does the loading of the downloaded weights (busy, not waiting); a load with neither for
    ``stall_s`` seconds (default ``STALL_S``), or running past ``deadline_s`` in all, is given up (its
    thread is left to end with its connection).

    Returns:
        What ``load()`` returns. Raises: what ``load()`` raises, or ``HubTimeout``.
    """
    stall_s = STALL_S if stall_s is None else stall_s
    result: list = []

    def target() -> None:
        try:
            with bounded_hub_timeouts():
                result.append((True, load()))
        except BaseException as e:                       # handed to the caller's thread
            result.append((False, e))

    t = threading.Thread(target=target, daemon=True, name=f"hub load {repo_id}")
    start = last_progress = time.monotonic()
    seen, cpu = _cache_bytes(repo_id), time.process_time()
    t.start()
    while True:
        t.join(poll_s)
        if result:
            ok, value = result[0]
            if ok:
                return value
            raise value
        now = time.monotonic()
        size, cpu_now = _cache_bytes(repo_id), time.process_time()
        if size != seen or cpu_now - cpu > 0.2 * poll_s:         # receiving, or working on what it has
            last_progress = now
        seen, cpu = size, cpu_now
        if now - last_progress > stall_s:
            raise HubTimeout(f"{endpoint()} sent nothing for {stall_s:g} s while loading {repo_id}")
        if now - start > deadline_s:
            raise HubTimeout(f"loading {repo_id} from {endpoint()} took more than {deadline_s:g} s")
