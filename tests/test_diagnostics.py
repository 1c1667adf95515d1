"""Appendix A1: the library parameters that reproduce the classic bugs (off by default, defaults unchanged),
the checks of ``course_lib.measures.diagnostics`` (each fails on the buggy input and passes on the correct one), and
the appendix's exercise checks (right answers pass, wrong ones are rejected, stubs are "not attempted")."""
import functools
import json
import math
import shutil

import numpy as np
import pytest
import torch

from course_lib.data import mnist
from course_lib.diffusion.forward import extract, predict_eps_from_x0, q_sample, simple_loss
from course_lib.diffusion.guidance import Guided, cfg_combine, guided, null_labels
from course_lib.diffusion.samplers import ddim_sample, ddpm_sample
from course_lib.diffusion.schedules import make_schedule
from course_lib.exercises import lessonA1
from course_lib.measures import diagnostics as D
from course_lib.networks.unet import UNet, UNetConfig, load_unet
from course_lib.training.loop import fit

torch.set_num_threads(1)


def digit(H=28, W=28) -> torch.Tensor:
    """One smooth image in [-0.9, 0.9], (1, 1, H, W)."""
    i, j = torch.arange(float(H)), torch.arange(float(W))
    return (0.9 * torch.sin(i[:, None] / 4) * torch.cos(j[None, :] / 5)).view(1, 1, H, W)


def tiny_unet(num_classes=0, dropout=0.0, seed=0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(UNetConfig(channels=(8, 16), time_dim=16, groups=4, heads=2, num_classes=num_classes,
                            dropout=dropout)).eval()
    torch.nn.init.normal_(model.out.weight, std=0.1)        # the output layer starts at zero: make it speak
    return model


# =========================================================================== the library parameters
# --------------------------------------------------------------------------- load_mnist(value_range=...)
def test_load_mnist_default_range_is_unchanged_bit_for_bit():
    x, _ = mnist.load_mnist("test", n=300, source="numpy", quiet=True)
    raw = mnist._read_idx(mnist.paths.mnist_dir() / mnist.FILES["test"][0])[:300]
    expected = torch.from_numpy(np.array(raw)).float().div_(127.5).sub_(1.0).unsqueeze(1)   # the old formula
    assert torch.equal(x, expected)
    assert torch.equal(mnist.load_mnist("test", n=300, source="numpy", quiet=True, value_range=(-1, 1))[0], x)


def test_load_mnist_value_range_reproduces_data_in_0_1(capsys):
    x, y = mnist.load_mnist("test", n=300, source="numpy")
    x01, y01 = mnist.load_mnist("test", n=300, source="numpy", value_range=(0, 1))
    assert "values in [0, 1]" in capsys.readouterr().out
    assert torch.equal(y, y01) and x01.min() == 0 and x01.max() == 1 and x01.dtype == torch.float32
    torch.testing.assert_close(x01 * 2 - 1, x, atol=1e-6, rtol=0)
    x255, _ = mnist.load_mnist("test", n=10, source="numpy", quiet=True, value_range=(0, 255))
    torch.testing.assert_close(x255, (x[:10] + 1) * 127.5, atol=1e-4, rtol=0)
    for bad in ((1, 0), (0.5, 0.5)):
        with pytest.raises(ValueError, match="value_range"):
            mnist.load_mnist("test", n=10, quiet=True, value_range=bad)


# --------------------------------------------------------------------------- extract / q_sample / simple_loss(axis=...)
def test_extract_default_axis_is_per_example():
    v = torch.arange(10.0)
    x = torch.zeros(3, 1, 4, 4)
    t = torch.tensor([0, 4, 9])
    assert torch.equal(extract(v, t, x), extract(v, t, x, axis=0))
    assert extract(v, t, x).shape == (3, 1, 1, 1) and extract(v, t, x, axis=-4).shape == (3, 1, 1, 1)


def test_extract_wrong_axis_lays_the_values_along_that_axis_or_raises():
    v = torch.arange(10.0)
    t = torch.tensor([1, 2, 3, 4])
    x = torch.zeros(4, 1, 4, 4)                     # batch 4 = width 4: the bug is silent
    out = extract(v, t, x, axis=-1)
    assert out.shape == (1, 1, 1, 4) and out.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert extract(v, t, x, axis=2).shape == (1, 1, 4, 1)
    with pytest.raises(ValueError, match="cannot broadcast"):
        extract(v, t, torch.zeros(4, 1, 5, 5), axis=-1)        # batch 4 against width 5: fails loudly
    with pytest.raises(ValueError, match="cannot broadcast"):
        extract(v, t, x, axis=1)                               # the channel axis has size 1
    with pytest.raises(ValueError, match="axis must be in"):
        extract(v, t, x, axis=4)


def test_q_sample_axis_default_unchanged_and_bug_scales_columns():
    s = make_schedule("cosine", 100)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(28, 1, 28, 28, generator=g), torch.randn(28, 1, 28, 28, generator=g)
    t = torch.arange(28) * 3
    want = s.sqrt_alpha_bar[t].view(-1, 1, 1, 1) * x0 + s.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1) * eps
    assert torch.equal(q_sample(x0, t, s, noise=eps), want)                       # DDPM Eq. (4), per example
    bug = q_sample(x0, t, s, noise=eps, axis=-1)
    col = s.sqrt_alpha_bar[t].view(1, 1, 1, -1) * x0 + s.sqrt_one_minus_alpha_bar[t].view(1, 1, 1, -1) * eps
    assert torch.equal(bug, col) and not torch.allclose(bug, want)
    # with one t for the whole batch (as when sampling) the bug changes nothing: why it hides
    assert torch.equal(q_sample(x0, 50, s, noise=eps, axis=-1), q_sample(x0, 50, s, noise=eps))


def test_simple_loss_axis_passes_through():
    s = make_schedule("cosine", 100)
    model = lambda x, t, cond=None: 0.5 * x                   # noqa: E731
    g = lambda: torch.Generator().manual_seed(3)               # noqa: E731
    x0 = torch.rand(28, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(simple_loss(model, x0, s, generator=g()), simple_loss(model, x0, s, generator=g(), axis=0))
    assert simple_loss(model, x0, s, generator=g(), axis=-1) != simple_loss(model, x0, s, generator=g())


# --------------------------------------------------------------------------- ddim_sample(final_alpha_bar=...)
def test_ddim_final_alpha_bar_default_is_one_and_the_bug_ends_in_noise():
    s = make_schedule("cosine", 1000)
    x0 = digit()
    oracle = lambda x, t, cond=None: predict_eps_from_x0(x, t, x0.expand_as(x), s)   # noqa: E731
    x_T = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = ddim_sample(oracle, x_T, s, steps=10)
    assert torch.equal(out, ddim_sample(oracle, x_T, s, steps=10, final_alpha_bar=1.0))
    assert torch.equal(out, ddim_sample(oracle, x_T, s, steps=10, final_alpha_bar=torch.tensor(1.0)))
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-4, rtol=0)
    bug = ddim_sample(oracle, x_T, s, steps=10, final_alpha_bar=s.alpha_bar[-1])
    assert abs(bug.std().item() - 1.0) < 0.1            # the last update re-noises x_0: static of spread ~1
    with pytest.raises(ValueError, match="final_alpha_bar"):
        ddim_sample(oracle, x_T, s, steps=10, final_alpha_bar=1.5)


# =========================================================================== the checks
def test_finding_is_truthy_only_when_ok_and_can_raise():
    ok, bad = D.Finding("x", True, "fine"), D.Finding("x", False, "broken")
    assert ok and not bad and repr(ok) == "[ok] x: fine" and repr(bad) == "[FAIL] x: broken"
    assert ok.raise_if_failed() is ok
    with pytest.raises(ValueError, match="broken"):
        bad.raise_if_failed()


def test_check_data_range():
    x, _ = mnist.load_mnist("test", n=64, quiet=True)
    x01, _ = mnist.load_mnist("test", n=64, quiet=True, value_range=(0, 1))
    good = D.check_data_range(x)
    assert good and good.values["min"] == -1 and good.values["max"] == 1
    assert not D.check_data_range(x01) and "[0, 1]" in D.check_data_range(x01).message
    assert not D.check_data_range((x + 1) * 127.5)                      # raw bytes
    assert not D.check_data_range(((x + 1) / 2 - 0.1307) / 0.3081)       # torchvision's Normalize
    assert D.check_data_range(x01, value_range=(0, 1))                    # a model that expects [0, 1]
    with pytest.raises(ValueError):
        D.check_data_range(x01).raise_if_failed()


def test_check_sample_stats():
    x, _ = mnist.load_mnist("test", n=200, quiet=True)
    x01, _ = mnist.load_mnist("test", n=100, quiet=True, value_range=(0, 1))
    assert D.check_sample_stats(x[:100], x[100:])
    grey = D.check_sample_stats(x01, x[100:])
    assert not grey and "grey" in grey.message
    noise = D.check_sample_stats(torch.randn(100, 1, 28, 28, generator=torch.Generator().manual_seed(0)), x[100:])
    assert not noise and "spread" in noise.message
    assert not D.check_sample_stats(torch.full((4, 1, 28, 28), float("nan")), x[100:])
    with pytest.raises(ValueError, match="image shape"):
        D.check_sample_stats(torch.zeros(4, 1, 8, 8), x)


def test_check_sampler_oracle_catches_off_by_ones():
    s = make_schedule("cosine", 1000)
    x0 = digit()
    assert D.check_sampler_oracle(functools.partial(ddim_sample, steps=10), s, x0)
    assert D.check_sampler_oracle(functools.partial(ddpm_sample, steps=20), s, x0)
    last = D.check_sampler_oracle(functools.partial(ddim_sample, steps=10, final_alpha_bar=s.alpha_bar[-1]), s, x0)
    assert not last and last.values["max_error"] > 1

    def t_plus_one(model, x_T, schedule):                      # the sampler feeds the network t + 1
        shifted = lambda x, t, cond=None: model(x, (t + 1).clamp(max=schedule.T - 1), cond)   # noqa: E731
        return ddim_sample(shifted, x_T, schedule, steps=10)
    small = D.check_sampler_oracle(t_plus_one, s, x0)
    assert not small and D.ORACLE_ATOL < small.values["max_error"] < 0.1     # small, but caught
    with pytest.raises(ValueError, match="one image"):
        D.check_sampler_oracle(functools.partial(ddim_sample, steps=10), s, torch.zeros(2, 1, 28, 28))


def test_signal_levels_and_check_broadcast():
    s = make_schedule("cosine", 1000)
    t = torch.tensor([0, 500, 999])
    levels = D.signal_levels(q_sample, s, t, shape=(1, 4, 4))
    assert levels.shape == (3, 1, 4, 4)
    assert torch.equal(levels, s.sqrt_alpha_bar[t].view(3, 1, 1, 1).expand(3, 1, 4, 4))
    assert D.check_broadcast(q_sample, s) and D.check_broadcast(q_sample, s).values["batch_sizes"] == [28, 31]
    assert D.check_broadcast(q_sample, s, shape=(3, 8, 8))
    columns = D.check_broadcast(functools.partial(q_sample, axis=-1), s)
    assert not columns and "wrong axis" in columns.message
    assert not D.check_broadcast(functools.partial(q_sample, axis=-2), s)              # rows: same bug
    crash = D.check_broadcast(functools.partial(q_sample, axis=1), s)
    assert not crash and "crashed" in crash.message

    def new_axis(x0, t, schedule, noise):                     # (B,) -> (B, 1, 1): broadcasts into (B, B, H, W)
        a, b = schedule.sqrt_alpha_bar[t].view(-1, 1, 1), schedule.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1)
        return a * x0 + b * noise
    shape = D.check_broadcast(new_axis, s)
    assert not shape and "shape" in shape.message


@pytest.fixture(scope="module")
def short_checkpoint(tmp_path_factory):
    """A tiny UNet trained 4 steps at a high learning rate, checkpointed: raw and EMA weights differ."""
    out = tmp_path_factory.mktemp("a1") / "run"
    model = tiny_unet()
    s = make_schedule("cosine", 100)
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fit(model, lambda m, x0, g: simple_loss(m, x0, s, generator=g), lambda g: x[torch.randperm(32, generator=g)[:8]],
        steps=4, lr=1e-2, warmup_steps=1, batch_size=8, ema_decay=0.9, config=model.config.to_dict(), out=out)
    return out


def test_check_ema_weights(short_checkpoint, tmp_path):
    ema, _ = load_unet(short_checkpoint)
    raw, _ = load_unet(short_checkpoint, raw=True)
    good = D.check_ema_weights(ema, short_checkpoint)
    assert good and good.values["ema_diff"] == 0 and good.values["raw_diff"] > 0
    bad = D.check_ema_weights(raw, short_checkpoint)
    assert not bad and "RAW" in bad.message and bad.values["raw_diff"] == 0
    other = D.check_ema_weights(tiny_unet(seed=1), short_checkpoint)
    assert not other and "neither" in other.message
    shipped = tmp_path / "shipped"                             # shipped weights keep no raw copy
    shutil.copytree(short_checkpoint, shipped)
    shutil.rmtree(shipped / "trainer")
    found = D.check_ema_weights(ema, shipped)
    assert found and math.isnan(found.values["raw_diff"])
    assert json.loads((shipped / "config.json").read_text())["channels"] == [8, 16]


def test_check_eval_mode():
    plain, dropped = tiny_unet(), tiny_unet(dropout=0.1)
    assert D.check_eval_mode(plain) and D.check_eval_mode(dropped)
    harmless = D.check_eval_mode(plain.train())
    assert not harmless and harmless.values["mode_dependent"] == [] and "unaffected" in harmless.message
    random = D.check_eval_mode(dropped.train())
    assert not random and len(random.values["mode_dependent"]) > 0 and "random" in random.message
    bn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    assert D.check_eval_mode(bn.eval()) and D.check_eval_mode(bn.train()).values["mode_dependent"] == ["1"]
    norms = torch.nn.Sequential(torch.nn.InstanceNorm2d(2), torch.nn.InstanceNorm2d(2, track_running_stats=True),
                                torch.nn.Dropout(0.0))
    assert D.check_eval_mode(norms.train()).values["mode_dependent"] == ["1"]    # only the one with running stats
    # and the symptom it explains: in train mode the same input gives two different predictions
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
    with torch.no_grad():
        assert not torch.equal(dropped(x, t), dropped(x, t))
        assert torch.equal(dropped.eval()(x, t), dropped(x, t))


def test_effective_guidance_scale():
    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(2, 1, 5, 5, generator=g), torch.randn(2, 1, 5, 5, generator=g)
    for w in (-3.0, 0.0, 1.0, 2.5, 7.5):
        assert abs(D.effective_guidance_scale(cfg_combine(u, c, w), u, c) - w) < 1e-6
    assert abs(D.effective_guidance_scale(cfg_combine(c, u, 3.0), u, c) - (1 - 3.0)) < 1e-6   # swapped arguments
    with pytest.raises(ValueError, match="undefined"):
        D.effective_guidance_scale(u, u, u)


def test_check_guidance_direction():
    model = tiny_unet(num_classes=10)
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(4, 1, 28, 28, generator=g), torch.full((4,), 500), torch.tensor([0, 3, 7, 9])
    for w in (0.0, 1.0, 3.0):
        ok = D.check_guidance_direction(guided(model, w), model, x, t, y)
        assert ok and abs(ok.values["w"] - w) < 1e-3
    flipped = D.check_guidance_direction(guided(model, -3.0), model, x, t, y, expected_w=3.0)
    assert not flipped and "AWAY" in flipped.message and abs(flipped.values["w"] + 3) < 1e-3
    assert not D.check_guidance_direction(guided(model, 2.0), model, x, t, y, expected_w=3.0)   # off by one

    class Swapped(Guided):                                    # eps_cond and eps_uncond swapped: w -> 1 - w
        def forward(self, x, t, cond=None):
            return cfg_combine(self.model(x, t, cond), self.model(x, t, null_labels(cond)), self.w)
    swapped = D.check_guidance_direction(Swapped(model, 3.0), model, x, t, y)
    assert not swapped and abs(swapped.values["w"] + 2) < 1e-3


# =========================================================================== the exercises
def stub(*args, **kwargs):
    raise NotImplementedError


def test_range_ok_exercise(capsys):
    assert not lessonA1.check_range_ok(stub).attempted
    assert "not attempted" in capsys.readouterr().out
    assert lessonA1.check_range_ok(lessonA1.reference_range_ok)
    right = lambda x: bool(x.min() >= -1.001 and x.max() <= 1.001 and x.min() <= -0.8 and x.max() >= 0.8)  # noqa: E731
    assert lessonA1.check_range_ok(right)
    only_inside = lambda x: bool(x.min() >= -1 and x.max() <= 1)          # noqa: E731  accepts [0, 1]
    no_rounding = lambda x: bool(x.min() >= -1 and x.max() <= 1 and x.min() <= -0.8 and x.max() >= 0.8)  # noqa: E731
    only_negative = lambda x: bool(x.min() < 0)                            # noqa: E731  accepts Normalize
    for wrong in (only_inside, no_rounding, only_negative):
        r = lessonA1.check_range_ok(wrong)
        assert r.attempted and not r
    out = capsys.readouterr().out
    assert "input:" in out and "hint:" in out


def test_effective_guidance_exercise(capsys):
    assert not lessonA1.check_effective_guidance(stub).attempted
    assert lessonA1.check_effective_guidance(D.effective_guidance_scale)

    def one_pixel(eg, eu, ec):                                # exact for a guided prediction, fooled by noise
        return ((eg - eu).flatten()[0] / (ec - eu).flatten()[0]).item()

    def their_w(eg, eu, ec):                                  # Ho & Salimans' w, ours minus 1
        return D.effective_guidance_scale(eg, eu, ec) - 1
    for wrong in (one_pixel, their_w):
        assert not lessonA1.check_effective_guidance(wrong)
    assert "hint:" in capsys.readouterr().out


def test_find_train_mode_exercise(capsys):
    g = torch.Generator().manual_seed(0)
    same = torch.rand(4, 1, 28, 28, generator=g) * 2 - 1
    static = torch.randn(4, 1, 28, 28, generator=g)
    jitter = 0.05 * torch.randn(4, 1, 28, 28, generator=g)
    pairs = {"correct": (same, same.clone()), "data in [0, 1]": ((same + 1) / 2, (same + 1) / 2),
             "last step": (static, static.clone()), "train mode": (same, same + jitter)}
    assert [k for k, v in lessonA1.shuffle_sets(pairs, 1).items() if v is pairs["train mode"]] == ["C"]
    assert not lessonA1.check_find_train_mode(stub, pairs).attempted
    assert lessonA1.check_find_train_mode(lessonA1.reference_find_train_mode, pairs)
    guess = lambda sets: "A"                                                         # noqa: E731
    noisiest = lambda sets: max(sets, key=lambda k: sets[k][0].std().item())         # noqa: E731  picks the static
    crashes = lambda sets: sets["E"]                                                 # noqa: E731
    for wrong in (guess, noisiest, crashes):
        r = lessonA1.check_find_train_mode(wrong, pairs)
        assert r.attempted and not r
    out = capsys.readouterr().out
    assert "KeyError" in out and "deterministic" in out
    with pytest.raises(ValueError, match="train mode"):
        lessonA1.check_find_train_mode(lessonA1.reference_find_train_mode, {"a": (same, same)})
