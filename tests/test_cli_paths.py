"""The command line under a hostile user, round 3 (reliability-2026-12.md, sections 1, 2, 3, 5 and 6): output
paths (F1, F6, F11), absurd guidance (F8), unCLIP's Python API (F10), options a model would silently ignore, and
one exit status for every refused input. The table of cases and their errors is in tests/README.md."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib import paths

WEIGHTS = paths.weights_dir()
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /sys are Linux's")
ENV = {**os.environ, "COURSE_PROFILE": "test", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}



@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a model is loaded or sampled, or the course starts: the error must come first."""
    from course_lib import registry
    from course_lib.course import book
    from course_lib.diffusion import flow, samplers
    from course_lib.networks import unet
    from course_lib.pipelines import latent
    from course_lib.training import denoiser

    def boom(*a, **k):
        raise AssertionError("compute started before the bad input was refused")
    for module, name in ((samplers, "sample"), (flow, "sample"), (unet, "load_unet"), (denoiser, "fit"),
                         (latent, "load_latent"), (registry, "load_pipeline"),
                         (book, "run_course")):
        monkeypatch.setattr(module, name, boom)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A scratch HOME, and a current folder that is not inside it (where a literal ``~`` folder would appear)."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return home


FLOW = ("sample", "--checkpoint", WEIGHTS / "flow", "-n", "2", "--steps", "2", "--labels", "3")
T2I = ("generate", "a 3", "-n", "1", "--steps", "2")


# --------------------------------------------------------------------------- F1: ~ in every path option
@pytest.mark.parametrize("suffix", [".png", ".pt"])
def test_sample_writes_a_tilde_out_to_home(suffix, cli, home):
    code, out, err = cli(*FLOW, "--out", f"~/s{suffix}", "--strip", "~/strip.png")
    assert code == 0, err
    assert (home / f"s{suffix}").is_file() and (home / "strip.png").is_file()
    assert not (Path.cwd() / "~").exists() and str(home / f"s{suffix}") in out


@pytest.mark.parametrize("suffix", [".png", ".pt"])
def test_generate_writes_a_tilde_out_to_home(suffix, cli, home):
    code, out, err = cli(*T2I, f"--out=~/g{suffix}")              # bash does not expand ~ after --out=
    assert code == 0, err
    assert (home / f"g{suffix}").is_file() and not (Path.cwd() / "~").exists()
    assert str(home / f"g{suffix}") in out and "Traceback" not in err


def test_train_and_course_get_the_expanded_folder(cli, home, monkeypatch):
    code, out, err = cli("train", "denoiser", "--steps", "2", "--out", "~/den", "--no-progress")
    assert code == 0, err
    assert (home / "den" / "model.safetensors").is_file() and not (Path.cwd() / "~").exists()
    from course_lib.course import book
    seen = {}
    monkeypatch.setattr(book, "run_course", lambda *a, **k: seen.update(k) or 0)
    code, _, err = cli("course", "--out", "~/build", "--lessons", "00")
    assert code == 0, err
    assert seen["out_dir"] == (home / "build").resolve() and not (Path.cwd() / "~").exists()


# --------------------------------------------------------------------------- F6, F11: every output path probed
@pytest.mark.parametrize("args", [
    pytest.param(("--out", "/proc/x.png"), marks=LINUX), pytest.param(("--out", "/proc/x.pt"), marks=LINUX),
    pytest.param(("--out", "/sys/x.png"), marks=LINUX),
    pytest.param(("--out", "OK", "--strip", "/proc/strip.png"), marks=LINUX),
    pytest.param(("--out", "OK", "--strip", "/sys/strip.png"), marks=LINUX),
    ("--out", "OK", "--strip", "FILE/strip.png"),
])
def test_sample_refuses_an_unwritable_path_before_any_compute(args, cli, no_compute, tmp_path):
    (tmp_path / "file").write_text("")                       # a file where a folder should be
    args = [str(tmp_path / "ok.png") if a == "OK" else a.replace("FILE", str(tmp_path / "file")) for a in args]
    code, _, err = cli(*FLOW, *args)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    assert ("--strip" if "--strip" in args else "--out") in err and not (tmp_path / "ok.png").exists()


@LINUX
@pytest.mark.parametrize("out", ["/proc/g.png", "/sys/g.pt"])
def test_generate_refuses_an_unwritable_out_before_loading(out, cli, no_compute):
    code, _, err = cli(*T2I, "-o", out)
    assert code == 2 and err.startswith(f"error: cannot write --out {out}: ") and err.count("\n") == 1, err


@LINUX
def test_course_refuses_an_unwritable_out_before_any_lesson(cli, no_compute):
    code, _, err = cli("course", "--out", "/proc/build")
    assert code == 2 and "cannot" in err and "/proc/build" in err, err


def test_the_probe_leaves_nothing_behind(tmp_path):
    paths.check_output_file(tmp_path / "a" / "x.png")
    paths.check_output_folder(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


# --------------------------------------------------------------------------- F8: absurd guidance, NaN samples
@pytest.mark.parametrize("cmd", [FLOW, T2I, ("sample", "--checkpoint", WEIGHTS / "latent", "-n", "2", "--labels", "1")])
def test_guidance_that_would_overflow_is_refused_before_compute(cmd, cli, no_compute, tmp_path):
    code, _, err = cli(*cmd, "--guidance", "1e30", "-o", tmp_path / "x.pt")
    assert code == 2 and "--guidance: must be between" in err and not (tmp_path / "x.pt").exists(), err


def test_the_python_api_refuses_overflowing_scales():
    from course_lib.diffusion.guidance import MAX_SCALE, autoguided, guided
    model = torch.nn.Identity()
    for w in (1e30, -1e30, 10 * MAX_SCALE):
        with pytest.raises(ValueError, match="must be between"):
            guided(model, w)
        with pytest.raises(ValueError, match="must be between"):
            autoguided(model, model, w)
    assert guided(model, MAX_SCALE).w == MAX_SCALE


def test_samples_with_nan_are_an_error_not_a_file(cli, monkeypatch, tmp_path):
    from course_lib.diffusion import flow, samplers
    from course_lib.diffusion.schedules import make_schedule

    def nan_model(x, t, cond=None):
        return torch.full_like(x, float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite"):                    # the Python API
        samplers.sample(nan_model, 2, make_schedule("cosine", 1000), steps=2)
    monkeypatch.setattr(flow, "sample", lambda model, n, **k: torch.full((n, 1, 28, 28), float("nan")))
    for out in ("x.pt", "x.png"):                                                # the command line
        code, _, err = cli(*FLOW, "-o", tmp_path / out)
        assert code == 2 and "NaN or infinite" in err and not (tmp_path / out).exists(), err


def test_the_text_pipelines_refuse_nan_samples(monkeypatch, unclip):
    from course_lib.pipelines.text_to_image import load_text2image
    pipe = load_text2image(WEIGHTS / "text2image")
    for net in (pipe.unet, unclip.decoder):
        monkeypatch.setattr(net, "forward", lambda x, t, cond=None: torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="NaN or infinite"):
        pipe("a 3", steps=2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        unclip("a 3", steps=2, prior_steps=2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        unclip.variations(torch.zeros(1, 1, 28, 28), n=2, steps=2)


# --------------------------------------------------------------------------- F10: unCLIP's Python API
@pytest.fixture(scope="module")
def unclip():
    from course_lib.pipelines.unclip import load_unclip
    return load_unclip(WEIGHTS / "unclip")


def test_unclip_refuses_an_empty_batch_and_none_prompts(unclip):
    with pytest.raises(ValueError, match="empty batch"):
        unclip.variations(torch.zeros(0, 1, 28, 28), n=2, steps=2)
    for call in (lambda: unclip(None), lambda: unclip.generate_with_labels(None),
                 lambda: unclip.text_embeddings(None), lambda: unclip([None]), lambda: unclip(3)):
        with pytest.raises(ValueError, match="prompts must be a string or a list of strings"):
            call()


def test_the_text_pipeline_refuses_none_prompts_too():
    from course_lib.pipelines.text_to_image import load_text2image
    pipe = load_text2image(WEIGHTS / "text2image")
    with pytest.raises(ValueError, match="prompts must be a string or a list of strings"):
        pipe(None, steps=2)


# --------------------------------------------------------------------------- item 12: the "held (note)" rows
@pytest.mark.parametrize("args, message", [
    # S34: --guidance beside --autoguidance was ignored
    (("sample", "--checkpoint", WEIGHTS / "denoiser", "--autoguidance", "2", "--guidance", "3"), "give one of them"),
    # S16 / L10 / class: --guidance without --labels was ignored (unconditional samples)
    (("sample", "--checkpoint", WEIGHTS / "flow", "--guidance", "5"), "without --labels"),
    (("sample", "--checkpoint", WEIGHTS / "latent", "--guidance", "5"), "without --labels"),
    (("sample", "--checkpoint", WEIGHTS / "class", "--guidance", "5"), "without --labels"),
    # S12: autoguidance on flow; the old advice (retrain) could not work
    (("sample", "--checkpoint", WEIGHTS / "flow", "--labels", "1", "--autoguidance", "2"), "steers the denoiser"),
    (("sample", "--checkpoint", WEIGHTS / "class", "--labels", "1", "--autoguidance", "2"), "steers the denoiser"),
    # S28, S29, S31: another kind of model
    (("sample", "--checkpoint", WEIGHTS / "unclip"), "holds an unclip model, which draws digits for prompts"),
    (("sample", "--checkpoint", WEIGHTS / "text2image-lm"), "python -m course_lib generate"),
    (("sample", "--checkpoint", WEIGHTS / "clip"), "holds a clip model, which does not sample digits"),
    (("sample", "--checkpoint", WEIGHTS / "autoencoder"), "holds an autoencoder model"),
    (("sample", "--checkpoint", "nowhere"), "error: no model at nowhere"),
    # S10, S14, S21, L16
    (("sample", "--checkpoint", WEIGHTS / "flow", "--labels", ""), "--labels is empty"),
    (("sample", "--checkpoint", WEIGHTS / "flow", "--labels", "10"), "out of range"),
    (("sample", "--checkpoint", WEIGHTS / "flow", "--seed", str(2 ** 70)), "--seed: must be a whole number from 0"),
    (("sample", "--checkpoint", WEIGHTS / "flow", "--sampler", "ddim"), "is a flow-matching model"),
    (("sample", "--checkpoint", WEIGHTS / "flow", "--eta", "0.5"), "--eta is DDIM's noise"),
    (("sample", "--checkpoint", WEIGHTS / "latent", "--strip", "STRIP"), "are for pixel models"),
    # G02, G12-G16: generate
    (("generate", ""), "empty prompt ''"),
    (("generate", "a 3", "--checkpoint", WEIGHTS / "latent"), "holds a latent model, which takes no prompt"),
    (("generate", "a 3", "--checkpoint", WEIGHTS / "flow"), "python -m course_lib sample"),
    (("generate", "a 3", "--checkpoint", WEIGHTS / "clip"), "not a text-to-image one"),
    (("generate", "a 3", "--model", "text2image-lm", "--checkpoint", WEIGHTS / "text2image"), "disagree"),
    (("generate", "a 3", "--model", "text2image", "--checkpoint", WEIGHTS / "text2image-lm"), "disagree"),
    (("generate", "a 3", "--seed", "-1"), "--seed: must be"),
])
def test_a_refused_input_is_one_line_status_2_before_any_compute(args, message, cli, no_compute, tmp_path):
    args = [tmp_path / "s.png" if a == "STRIP" else a for a in args]
    code, _, err = cli(*args, "-o", tmp_path / "x.png")
    assert code == 2 and message in err, err
    assert "(kind 'unet')" not in err and "retrain" not in err and not (tmp_path / "x.png").exists()
    lines = err.strip().splitlines()
    assert lines[-1].startswith(("error:", "python -m course_lib")) and "error:" in lines[-1]
    assert len(lines) == 1 or lines[0].startswith("usage:"), err       # ours: one line; argparse: usage + error


@pytest.mark.parametrize("out, message", [("dir/.png", "has no file name before .png"),
                                          ("x.PNG", "must end in .png or .pt"),
                                          ("FILE/x.png", "is a file, not a folder")])
def test_out_names_are_explained(out, message, cli, no_compute, tmp_path):
    (tmp_path / "file").write_text("")
    out = out.replace("FILE", str(tmp_path / "file"))
    code, _, err = cli(*FLOW, "-o", tmp_path / out if not out.startswith("/") else out)
    assert code == 2 and message in err, err


@pytest.mark.parametrize("config, message", [("{not json", "is not valid JSON"),
                                             ('{"hello": 1}', "describes no model this course knows")])
@pytest.mark.parametrize("cmd", ["sample", "generate"])
def test_a_folder_of_no_known_kind_is_named(cmd, config, message, cli, no_compute, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(config)
    args = ("sample", "--checkpoint") if cmd == "sample" else ("generate", "a 3", "--checkpoint")
    code, _, err = cli(*args, tmp_path / "m", "-o", tmp_path / "x.png")
    assert code == 2 and message in err and str(tmp_path / "m" / "config.json") in err, err


def test_the_denoiser_without_a_guide_names_the_right_remedy(cli, no_compute, tmp_path):
    short = tmp_path / "short"
    short.mkdir()
    for name in ("config.json", "model.safetensors"):             # a denoiser whose run kept no guide
        (short / name).write_bytes((WEIGHTS / "denoiser" / name).read_bytes())
    code, _, err = cli("sample", "--checkpoint", short, "--autoguidance", "2", "-o", tmp_path / "x.png")
    assert code == 2 and "no guide.safetensors" in err and "train the denoiser longer" in err, err


def test_sample_and_generate_share_short_and_long_options():
    from course_lib.__main__ import build_parser
    p = build_parser()
    for cmd in (["sample", "--checkpoint", "c"], ["generate", "a 3"]):
        for n, o in (("-n", "-o"), ("--n", "--out")):
            args = p.parse_args([*cmd, n, "3", o, "x.png"])
            assert args.n == 3 and args.out == "x.png"


def test_help_is_plain_words_and_says_what_sample_takes(cli):
    for sub in ((), ("sample",), ("generate",), ("train",), ("course",), ("weights",), ("info",), ("links",)):
        code, out, _ = cli(*sub, "--help")
        assert code == 0 and "`" not in out and "denoiser or class model checkpoint" not in out
    code, out, _ = cli("sample", "--help")
    assert "flow" in out and "latent" in out and "euler" in out


@pytest.mark.parametrize("argv", [["--help"], ["sample", "--help"], ["generate", "--help"], ["--version"]])
def test_help_does_not_import_torch(argv):
    """``python -m course_lib --help`` starts in well under a second because nothing imports torch."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "course_lib", *argv], capture_output=True,
                       text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "course_lib" in imported and not {m for m in imported if re.match(r"(torch|numpy)\b", m)}


def test_the_package_names_still_import_lazily():
    code = ("import sys, course_lib; assert 'torch' not in sys.modules; from course_lib import setup, Profile; "
            "assert 'torch' in sys.modules and callable(setup) and 'setup' in dir(course_lib); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
