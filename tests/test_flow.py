"""Flow matching (lesson 12): the straight path and its velocity, the Euler and Heun samplers against a
closed form, determinism, a tiny trained model, and the errors a user meets first."""
import math

import pytest
import torch

from course_lib.diffusion import flow
from course_lib.diffusion.flow import (
    TIME_SCALE,
    eps_from_v,
    euler_sample,
    flow_loss,
    flow_path,
    heun_sample,
    sample_time,
    v_from_eps,
    v_from_x0,
    velocity_target,
    x0_from_v,
)


def test_path_endpoints_and_velocity_are_exact():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    assert torch.equal(flow_path(x0, eps, 0.0), x0) and torch.equal(flow_path(x0, eps, 1.0), eps)
    t = torch.tensor([0.1, 0.4, 0.7, 0.9], dtype=torch.float64)
    h = 1e-6                                                     # d x_t / dt, in float64: eps - x0 exactly
    x0d, epsd = x0.double(), eps.double()
    dx = (flow_path(x0d, epsd, t + h) - flow_path(x0d, epsd, t - h)) / (2 * h)
    assert torch.allclose(dx, velocity_target(x0d, epsd), atol=1e-8)


def test_eps_x0_v_conversions_invert_each_other():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    t = torch.tensor([0.2, 0.5, 0.8])
    x_t, v = flow_path(x0, eps, t), velocity_target(x0, eps)
    assert torch.allclose(x0_from_v(x_t, t, v), x0, atol=1e-6)
    assert torch.allclose(eps_from_v(x_t, t, v), eps, atol=1e-6)
    assert torch.allclose(v_from_eps(x_t, t, eps), v, atol=1e-5)
    assert torch.allclose(v_from_x0(x_t, t, x0), v, atol=1e-5)
    # a DDPM point lands on the straight path at the t of the same signal-to-noise ratio
    ab = torch.tensor([0.9, 0.5, 0.1])
    x_ddpm = ab.sqrt()[:, None] * x0 + (1 - ab).sqrt()[:, None] * eps
    x_flow, t_flow = flow.ddpm_to_flow(x_ddpm, ab)
    assert torch.allclose(x_flow, flow_path(x0, eps, t_flow), atol=1e-6)


def test_time_distributions():
    g = torch.Generator().manual_seed(0)
    u, ln = sample_time(20_000, "uniform", g), sample_time(20_000, "logit-normal", g)
    assert 0 < u.min() and u.max() < 1 and 0 < ln.min() and ln.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(ln.mean() - 0.5) < 0.01
    assert (ln - 0.5).abs().mean() < (u - 0.5).abs().mean()     # logit-normal: more of them in the middle
    with pytest.raises(ValueError, match="time must be one of"):
        sample_time(4, "cosine", g)


def _gaussian_flow(mu: torch.Tensor, s: torch.Tensor):
    """The exact velocity of x_t = (1 - t) x0 + t eps for x0 ~ N(mu, diag s^2), eps ~ N(0, I):
    x_t ~ N(m_t, sigma_t^2) with m_t = (1 - t) mu, sigma_t^2 = (1 - t)^2 s^2 + t^2, and
    v(x, t) = E[eps - x0 | x_t = x] = m_t' + (sigma_t' / sigma_t) (x - m_t), so the ODE carries the noise z
    to mu + s z."""
    def model(x, t_scaled, cond=None):
        t = (t_scaled / TIME_SCALE)[:, None]
        m, var = (1 - t) * mu, (1 - t) ** 2 * s ** 2 + t ** 2
        return -mu + (t - (1 - t) * s ** 2) / var * (x - m)
    return model


def test_euler_and_heun_match_the_gaussian_closed_form():
    mu, s = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 2.0])
    model = _gaussian_flow(mu, s)
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    exact = mu + s * z
    err = {}
    for name, fn in (("euler", euler_sample), ("heun", heun_sample)):
        for steps in (20, 100, 1000):
            err[name, steps] = (fn(model, z, steps=steps) - exact).abs().max().item()
    assert err["euler", 1000] < 2e-2 and err["heun", 1000] < 1e-4        # |x| up to ~6 here
    assert err["euler", 1000] < err["euler", 100] / 8           # first order: 10x the steps, ~1/10 the error
    assert err["heun", 100] < err["heun", 20] / 15              # second order: 5x the steps, ~1/25
    assert err["heun", 20] < err["euler", 20] / 5               # at equal steps Heun is far closer


def test_callback_and_times():
    mu, s = torch.zeros(2), torch.ones(2)
    seen = []
    euler_sample(_gaussian_flow(mu, s), torch.ones(3, 2), steps=4, callback=seen.append)
    assert [d["i"] for d in seen] == [0, 1, 2, 3] and [d["t"] for d in seen] == [1.0, 0.75, 0.5, 0.25]
    assert set(seen[0]) == {"i", "t", "x_t", "x0_hat", "v"}
    assert flow.nfe("heun", 5) == 9 and flow.nfe("euler", 5) == 5


def test_bad_input_is_refused():
    x0 = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow_path(x0, x0, 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow_path(x0, x0, torch.tensor([0.5, -0.1]))
    model = _gaussian_flow(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        euler_sample(model, x0, times=[1.2, 0.0])
    with pytest.raises(ValueError, match="decrease"):
        heun_sample(model, x0, times=[0.0, 1.0])
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps"):
            flow.flow_times(steps)


@pytest.fixture(scope="module")
def tiny_flow():
    """The test profile's flow model (trained in seconds, once per test run: lesson 12 uses the same one):
    (model, folder)."""
    from course_lib.config import get_profile, get_runtime
    from course_lib.registry import find_matching, get_model
    profile = get_profile("test")
    model = get_model("flow", profile, get_runtime("cpu"), progress=False)
    return model, find_matching("flow", profile)


def test_sampling_is_deterministic_for_a_seed(tiny_flow):
    model, _ = tiny_flow
    labels = torch.arange(6) % 10
    draw = lambda seed, sampler: flow.sample(model, 6, sampler=sampler, steps=3, cond=labels,
                                             generator=torch.Generator().manual_seed(seed))
    for sampler in ("euler", "heun"):
        assert torch.equal(draw(0, sampler), draw(0, sampler))
        assert not torch.equal(draw(0, sampler), draw(1, sampler))


def test_a_tiny_flow_model_beats_chance(tiny_flow):
    from course_lib.config import get_profile, get_runtime
    from course_lib.diffusion.guidance import guided
    from course_lib.networks.classifier import classify
    from course_lib.registry import get_model
    model, _ = tiny_flow
    clf = get_model("classifier", get_profile("test"), get_runtime("cpu"), progress=False)
    n = 200
    labels = torch.arange(n) % 10
    x = flow.sample(guided(model, 3.0), n, steps=5, cond=labels, generator=torch.Generator().manual_seed(0))
    acc = (classify(clf, x)[0].argmax(1) == labels).float().mean().item()
    z = (acc - 0.1) / math.sqrt(0.1 * 0.9 / n)
    print(f"tiny flow model: {acc:.1%} of {n} samples show their label (z = {z:.1f} against chance)")
    assert z > 5


def test_a_sampler_must_fit_the_model(tiny_flow, tmp_path):
    from course_lib.diffusion.samplers import sample as ddpm_family_sample
    from course_lib.diffusion.schedules import make_schedule
    from course_lib.networks.unet import load_unet
    model, out = tiny_flow
    with pytest.raises(ValueError, match="flow-matching model"):
        ddpm_family_sample(model, 2, make_schedule("cosine", 1000), sampler="ddim", steps=2)
    ddpm_model, _ = load_unet("data/weights/class")
    with pytest.raises(ValueError, match="predicts the noise"):
        flow.sample(ddpm_model, 2, steps=2)
    with pytest.raises(ValueError, match="unknown flow sampler"):
        flow.sample(model, 2, sampler="ddim", steps=2)
    with pytest.raises(ValueError, match="steps"):
        flow.sample(model, 2, steps=0)
    with pytest.raises(ValueError, match="label 10"):
        flow.sample(model, 2, steps=2, cond=torch.tensor([3, 10]))


def test_flow_loss_parts(tiny_flow):
    model, _ = tiny_flow
    x0 = torch.zeros(8, 1, 28, 28)
    loss, parts = flow_loss(model, x0, generator=torch.Generator().manual_seed(0), return_parts=True)
    assert parts["t"].dtype == torch.long and parts["t"].min() >= 0 and parts["t"].max() < 1000
    assert torch.isclose(loss, parts["per_example"].mean())
    weighted = flow_loss(model, x0, generator=torch.Generator().manual_seed(0), weight=lambda t: 2 * t ** 0)
    assert torch.isclose(weighted, 2 * loss)


def test_cli_samples_a_flow_model_and_refuses_a_wrong_sampler(tiny_flow, tmp_path, capsys):
    from course_lib.__main__ import main
    _, out = tiny_flow

    def run(*args):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int):
                print(e.code)
        got = capsys.readouterr()
        return code, got.out + got.err
    pt = tmp_path / "x.pt"
    for sampler in ("euler", "heun"):
        code, text = run("sample", "--checkpoint", str(out), "--labels", "all", "--n", "10", "--steps", "2",
                         "--sampler", sampler, "--guidance", "2", "--out", str(pt))
        assert code == 0, text
        images, labels = torch.load(pt, weights_only=True)
        assert images.shape == (10, 1, 28, 28) and labels.tolist() == list(range(10))
    code, text = run("sample", "--checkpoint", str(out), "--sampler", "ddim", "--out", str(pt))
    assert code != 0 and "flow-matching model" in text and "euler or heun" in text
    code, text = run("sample", "--checkpoint", "data/weights/class", "--sampler", "euler", "--labels", "all",
                     "--out", str(pt))
    assert code != 0 and "DDPM model" in text and "ddim" in text
    code, text = run("sample", "--checkpoint", str(out), "--steps", "0", "--out", str(pt))
    assert code != 0 and "must be >= 1" in text
