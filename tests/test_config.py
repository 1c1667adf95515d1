import subprocess
import sys

import pytest
import torch

from course_lib import config
from course_lib.config import PROFILES, Profile, get_profile, get_runtime, seed_everything
from course_lib.training.denoiser import recipe_config as denoiser_recipe


def test_unknown_profile_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "bogus")
    with pytest.raises(ValueError) as e:
        get_profile()
    msg = str(e.value)
    assert "bogus" in msg and all(name in msg for name in ("test", "cpu", "gpu"))


def test_bogus_profile_is_a_one_line_error_on_the_command_line():
    r = subprocess.run([sys.executable, "-m", "course_lib", "info"], capture_output=True, text=True,
                       env={**__import__("os").environ, "COURSE_PROFILE": "bogus"})
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "bogus" in lines[0] and "cpu" in lines[0], r.stderr


def test_env_override_and_auto_choice(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "CPU")
    assert get_profile().name == "cpu"
    monkeypatch.delenv("COURSE_PROFILE")
    assert get_profile(device=torch.device("cpu")).name == "cpu"
    assert get_profile(device=torch.device("cuda")).name == "gpu"
    assert get_profile(device=torch.device("mps")).name == "cpu"


def test_profiles_are_frozen_and_complete():
    p = PROFILES["test"]
    with pytest.raises(Exception):
        p.batch_size = 3
    assert p.replace(batch_size=3).batch_size == 3 and p.batch_size != 3
    for prof in PROFILES.values():
        assert isinstance(prof, Profile) and len(denoiser_recipe(prof).channels) == 2
        assert 0 < prof.p_uncond < 1 and prof.max_frames >= 2 and prof.n_show >= 4
    assert PROFILES["test"].threads == 1


def test_runtime_on_cpu_is_bf16_only_with_hardware_bf16_and_never_compiles():
    rt = get_runtime("cpu")
    assert rt.precision == ("bf16" if config.cpu_has_bf16_units() else "fp32")
    assert not rt.use_grad_scaler and not rt.compile


def test_compile_setting_reads_on_off_and_modes(monkeypatch):
    assert config.compile_setting("0") == (False, "reduce-overhead")
    assert config.compile_setting("1") == (True, "reduce-overhead")          # CUDA graphs: measured fastest
    assert config.compile_setting("max-autotune") == (True, "max-autotune")
    assert config.compile_setting(True) == (True, "reduce-overhead")
    monkeypatch.setenv("COURSE_COMPILE", "default")
    assert config.compile_setting(None) == (True, "default")
    assert not get_runtime("cpu").compile                     # asked for, but compile is used on CUDA only
    monkeypatch.setenv("COURSE_COMPILE", "fast")
    with pytest.raises(ValueError, match="reduce-overhead"):
        get_runtime("cpu")


def test_precision_override(monkeypatch):
    monkeypatch.setenv("COURSE_PRECISION", "fp32")
    rt = get_runtime("cpu")
    assert rt.precision == "fp32"
    with config.autocast(rt):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    rt = get_runtime("cpu", precision="bf16")            # the argument wins over the environment
    assert rt.precision == "bf16" and not rt.use_grad_scaler
    with config.autocast(rt):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setenv("COURSE_PRECISION", "fp8")
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        get_runtime("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        get_runtime("cpu", precision="fp16")


def test_seed_everything_reproduces():
    g1 = seed_everything(3)
    a = torch.randn(3), torch.randn(3, generator=g1)
    g2 = seed_everything(3)
    b = torch.randn(3), torch.randn(3, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_setup_prints_one_line(capsys):
    config._announced.clear()
    prof, rt = config.setup("test")
    config.setup("test")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "profile=test" in out[0] and f"precision={rt.precision}" in out[0]
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("raw", ["test ", " test", "\ttest \r\n", "TEST "])
def test_profile_read_with_surrounding_spaces_stripped(monkeypatch, raw):
    """cmd's `set COURSE_PROFILE=test && ...` stores "test " (the space before &&): it still means test."""
    monkeypatch.setenv("COURSE_PROFILE", raw)
    assert config.profile_from_env() == "test"
    assert get_profile().name == "test"
    assert get_profile(" cpu ").name == "cpu"


def test_a_blank_profile_means_unset(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "  ")
    assert config.profile_from_env() is None
    assert get_profile(device=torch.device("cpu")).name == "cpu"          # chosen automatically, no error
