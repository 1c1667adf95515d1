"""Classifier-free guidance (lesson 05): the wrapper's algebra, one batched forward pass, label dropout at the
profile's rate, a trained test-profile class model that really draws the asked-for digit, the sampling CLI
with labels, and the lesson's exercise checks."""
import math
import os
import subprocess
import sys

import pytest
import torch

from course_lib.config import get_profile, get_runtime, seed_everything
from course_lib.diffusion.guidance import Guided, cfg_combine, drop_condition, guided, null_labels
from course_lib.diffusion.samplers import sample
from course_lib.diffusion.schedules import make_schedule
from course_lib.exercises.lesson05 import check_condition, check_guidance_combine, reference_condition
from course_lib.measures.metrics import evaluate_samples
from course_lib.networks.unet import UNet, UNetConfig
from course_lib.training import denoiser
from course_lib.training.classifier import train_classifier
from course_lib.training.denoiser import recipe_config as denoiser_recipe
from course_lib.training.denoiser import train_class_model

CPU = get_runtime("cpu")
ENV = {**os.environ, "COURSE_PROFILE": "test", "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- the wrapper
class ClosedForm(torch.nn.Module):
    """A dummy 'network' whose prediction is elementwise in x and depends on t and the label (diffusers-style
    closed-form test model): batched and separate calls give bit-identical results. Counts its calls."""

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, x, t, cond=None):
        self.batch_sizes.append(x.shape[0])
        label = torch.full((x.shape[0],), -1.0) if cond is None else cond.float()
        return 0.5 * x + 1e-3 * t.float().view(-1, 1, 1, 1) + 0.1 * (label + 1).view(-1, 1, 1, 1)


def tiny_class_unet(seed=0):
    torch.manual_seed(seed)
    model = UNet(UNetConfig(channels=(8, 16), time_dim=16, groups=4, heads=2, num_classes=10)).eval()
    torch.nn.init.normal_(model.out.weight, std=0.1)        # the output layer starts at zero: make it speak
    return model


def inputs(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 1, 28, 28, generator=g), torch.randint(0, 1000, (B,), generator=g),
            torch.randint(0, 10, (B,), generator=g))


@torch.no_grad()
def test_w0_is_unconditional_and_w1_conditional_exactly():
    model = tiny_class_unet()
    x, t, y = inputs()
    assert torch.equal(guided(model, 0.0)(x, t, y), model(x, t, null_labels(y)))
    assert torch.equal(guided(model, 1.0)(x, t, y), model(x, t, y))
    assert torch.equal(guided(model, 3.0)(x, t, None), model(x, t, None))   # no condition: the unconditional model
    assert torch.equal(model(x, t, null_labels(y)), model(x, t, None))      # -1 and None are the same "no class"
    assert not torch.allclose(model(x, t, y), model(x, t, None))            # ... and the label does matter


@pytest.mark.parametrize("w", [0.5, 2.0, 3.0, 7.5, -1.0])
@torch.no_grad()
def test_combination_matches_cfg_combine_in_one_batched_pass(w):
    dummy = ClosedForm()
    x, t, y = inputs()
    out = Guided(dummy, w)(x, t, y)
    assert dummy.batch_sizes == [2 * len(y)]                                 # one forward pass, doubled batch
    assert torch.equal(out, cfg_combine(dummy(x, t, null_labels(y)), dummy(x, t, y), w))
    model = tiny_class_unet()                                               # a real network: equal up to rounding
    torch.testing.assert_close(guided(model, w)(x, t, y), cfg_combine(model(x, t, None), model(x, t, y), w),
                               atol=1e-5, rtol=1e-5)


def test_w_and_ho_salimans_w_differ_by_one():
    x, t, y = inputs()
    dummy = ClosedForm()
    eps_c, eps_u = dummy(x, t, y), dummy(x, t, None)
    for w_paper in (0.0, 0.3, 1.0, 4.0):                                    # Ho & Salimans 2022, Eq. 6
        torch.testing.assert_close(cfg_combine(eps_u, eps_c, w_paper + 1), (1 + w_paper) * eps_c - w_paper * eps_u)


# --------------------------------------------------------------------------- label dropout
def binomial_ok(k, n, p, z=5.0):
    return abs(k / n - p) <= z * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("name", ["test", "cpu", "gpu"])
def test_drop_rate_matches_the_profile(name):
    p = get_profile(name).p_uncond
    labels = torch.arange(100_000) % 10
    out = drop_condition(labels, p, torch.Generator().manual_seed(0))
    dropped = out == -1
    assert binomial_ok(int(dropped.sum()), len(labels), p)
    assert torch.equal(out[~dropped], labels[~dropped])                    # kept labels are unchanged
    g = torch.Generator().manual_seed(1)
    assert (drop_condition(labels, 0.0, g) == labels).all() and (drop_condition(labels, 1.0, g) == -1).all()


# --------------------------------------------------------------------------- a trained test-profile model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train the test profile's class model (recording every condition the network is trained with) and get
    the metrics classifier."""
    profile = get_profile("test")
    seen = []

    def spy(labels, p_uncond, generator):
        out = drop_condition(labels, p_uncond, generator)
        seen.append(out.clone())
        return out

    out = tmp_path_factory.mktemp("class")
    seed_everything(0)                                  # the UNet's initial weights come from torch's global RNG
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(denoiser, "drop_condition", spy)
        res = train_class_model(profile, out=out, runtime=CPU, progress=False)
    seed_everything(0)                                  # our own, seeded classifier: the measure is reproducible
    clf = train_classifier(profile, out=tmp_path_factory.mktemp("classifier"), runtime=CPU, progress=False)
    return profile, res.ema_model.eval(), out, clf.ema_model.eval(), torch.cat(seen)


def test_training_drops_labels_at_the_profile_rate(trained):
    profile, _, _, _, seen = trained
    assert len(seen) == denoiser_recipe(profile).class_steps * profile.batch_size
    assert binomial_ok(int((seen == -1).sum()), len(seen), profile.p_uncond)
    assert set(seen[seen >= 0].unique().tolist()) == set(range(10))


def test_guided_class_model_draws_the_asked_digit_more_often(trained):
    """With strong guidance (w = 3 x the profile's default, lesson 05's W_HIGH) the classifier recognises the
    asked-for digit clearly more often than in unconditional samples (w = 0) of the same network from the
    same noises: a two-proportion z-test at N = 200 per arm. The test profile's model is tiny (about 30 %
    against chance's 10 %); over 4 training seeds x 3 classifier seeds z ranged from 3.4 to 7.2."""
    profile, model, _, clf, _ = trained
    schedule = make_schedule(profile.schedule, profile.T)
    N, w = 200, 3 * denoiser_recipe(profile).guidance
    labels = torch.arange(N) % 10
    acc = {}
    for scale in (0.0, w):
        x = sample(guided(model, scale), N, schedule, steps=profile.sample_steps, cond=labels,
                   generator=torch.Generator().manual_seed(0))
        acc[scale] = evaluate_samples(clf, x, labels)["accuracy"]
    pooled = (acc[0.0] + acc[w]) / 2
    z = (acc[w] - acc[0.0]) / math.sqrt(pooled * (1 - pooled) * 2 / N)
    assert z > 3, f"guided (w = {w}) accuracy {acc[w]:.1%} vs unconditional {acc[0.0]:.1%} (z = {z:.1f})"


# --------------------------------------------------------------------------- the command line
def cli(*args):
    return subprocess.run([sys.executable, "-m", "course_lib", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


def test_cli_samples_the_asked_labels(trained, tmp_path):
    ckpt = str(trained[2])
    r = cli("sample", "--checkpoint", ckpt, "--labels", "0,1,7", "--guidance", "3", "--n", "6",
            "--out", str(tmp_path / "x.pt"))
    assert r.returncode == 0, r.stderr
    images, labels = torch.load(tmp_path / "x.pt", weights_only=True)
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.float32
    assert labels.tolist() == [0, 0, 1, 1, 7, 7]
    r = cli("sample", "--checkpoint", ckpt, "--labels", "12", "--out", str(tmp_path / "y.pt"))
    assert r.returncode != 0 and "0 to 9" in r.stderr and not (tmp_path / "y.pt").exists()


# --------------------------------------------------------------------------- the lesson's exercises
def stub(*args):
    raise NotImplementedError


def test_condition_check(capsys):
    assert check_condition(reference_condition)
    assert not check_condition(stub).attempted
    wrong = check_condition(lambda p, event: torch.tensor([float(event(f)) for f in range(len(p))]) * p)
    out = capsys.readouterr().out
    assert not wrong and wrong.attempted and "hint:" in out
    exact = reference_condition(torch.full((6,), 1 / 6), lambda face: face % 2 == 0)
    torch.testing.assert_close(exact, torch.tensor([0, 1, 0, 1, 0, 1]) / 3)
    with pytest.raises(ValueError, match="probability 0"):
        reference_condition(torch.full((6,), 1 / 6), lambda face: face > 6)


def test_guidance_combine_check(capsys):
    assert check_guidance_combine(cfg_combine)
    ho_salimans = check_guidance_combine(lambda u, c, w: (1 + w) * c - w * u)   # their w, not ours
    assert not ho_salimans and "minus 1" in capsys.readouterr().out


def test_autoguidance_extrapolates_away_from_the_guide():
    from course_lib.diffusion.guidance import autoguided
    good = lambda x, t, cond=None: x * 2.0                                 # noqa: E731
    bad = lambda x, t, cond=None: x + 1.0                                  # noqa: E731
    x, t = torch.randn(3, 1, 28, 28), torch.zeros(3, dtype=torch.long)
    assert torch.equal(autoguided(good, bad, 1.0)(x, t), good(x, t))      # w = 1: the model alone
    assert torch.allclose(autoguided(good, bad, 0.0)(x, t), bad(x, t))    # w = 0: the guide
    w = 2.5
    assert torch.allclose(autoguided(good, bad, w)(x, t), bad(x, t) + w * (good(x, t) - bad(x, t)))
