"""The command line, as a user runs it: --help everywhere, train (and resume), sample to PNG and .pt."""
import os
import subprocess
import sys

import pytest
import torch

ENV = {**os.environ, "COURSE_PROFILE": "test", "OMP_NUM_THREADS": "1"}


class Run:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """Run the command line in-process (as ``python -m course_lib ...`` would), capturing its output."""
    from course_lib.__main__ import main

    def run(*args):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int) and e.code:
                print(e.code, file=sys.stderr)
        out = capsys.readouterr()
        return Run(code, out.out, out.err)
    return run


@pytest.mark.parametrize("sub", ["train", "sample", "generate", "weights", "course", "info", "links"])
def test_every_subcommand_has_help(sub, cli):
    r = cli(sub, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "course_lib", "info"], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0 and "profile=test" in r.stdout


def test_train_then_resume_then_sample(tmp_path, cli):
    out = tmp_path / "den"
    r = cli("train", "denoiser", "--steps", "30", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "step 30" in r.stdout and (out / "model.safetensors").is_file()
    r = cli("train", "denoiser", "--steps", "30", "--out", str(out), "--no-progress")   # finished: nothing to do
    assert r.returncode == 0 and "step 30" in r.stdout
    r = cli("train", "denoiser", "--steps", "40", "--out", str(out), "--no-progress")   # another schedule
    assert r.returncode != 0 and "30-step run" in r.stderr
    png, pt = tmp_path / "grid.png", tmp_path / "s.pt"
    r = cli("sample", "--checkpoint", str(out), "--n", "5", "--steps", "4", "--sampler", "ddim", "--seed", "1",
            "--out", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = cli("sample", "--checkpoint", str(out), "--n", "5", "--steps", "4", "--sampler", "ddpm", "--seed", "1",
            "--out", str(pt))
    assert r.returncode == 0, r.stderr
    images, labels = torch.load(pt, weights_only=True)
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.float32 and labels is None
    assert images.min() >= -1 and images.max() <= 1


def test_missing_checkpoint_says_where_it_looked(tmp_path, cli):
    r = cli("sample", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png"))
    assert r.returncode != 0 and str(tmp_path / "nope") in (r.stderr + r.stdout)


def test_bad_output_suffix_is_clear(tmp_path, cli):
    r = cli("train", "denoiser", "--steps", "2", "--out", str(tmp_path / "d"), "--no-progress")
    assert r.returncode == 0
    r = cli("sample", "--checkpoint", str(tmp_path / "d"), "--n", "2", "--steps", "2", "--out", str(tmp_path / "x.jpg"))
    assert r.returncode != 0 and ".png" in r.stderr
    r = cli("sample", "--checkpoint", str(tmp_path / "d"), "--labels", "1,2", "--out", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "unconditional model" in r.stderr     # its clusters are not digits


def test_autoguided_sampling_and_the_reverse_process_strip(tmp_path, cli):
    out = tmp_path / "den"
    r = cli("train", "denoiser", "--steps", "60", "--out", str(out), "--no-progress")   # guide kept at step 50
    assert r.returncode == 0, r.stderr
    png, strip = tmp_path / "grid.png", tmp_path / "strip.png"
    r = cli("sample", "--checkpoint", str(out), "--n", "4", "--steps", "12", "--sampler", "ddpm",
            "--autoguidance", "2", "--strip", str(strip), "--out", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:4] == b"\x89PNG" and strip.read_bytes()[:4] == b"\x89PNG"
    assert "12 steps" in r.stdout
    short = tmp_path / "short"
    cli("train", "denoiser", "--steps", "5", "--out", str(short), "--no-progress")   # too short for a guide
    r = cli("sample", "--checkpoint", str(short), "--n", "2", "--steps", "2", "--autoguidance", "2",
            "--out", str(png))
    assert r.returncode != 0 and "guide" in r.stderr
