"""Samplers (DDPM Algorithm 2, DDIM Eq. 12): closed-form dummy models, seeded noise, small T and images.

- an oracle denoiser for a one-image dataset samples that image (DDPM and DDIM);
- the optimal denoiser for Gaussian data N(0, s^2 I) is smooth, so DDIM (eta = 0) can be run backwards
  (inverted) and forwards again;
- seeds reproduce samples, DDIM with eta = 0 is bit-identical, DDIM with eta = 1 is DDPM.
"""
import math

import pytest
import torch

from course_lib.diffusion import samplers as S
from course_lib.diffusion.forward import extract, predict_eps_from_x0, q_posterior, q_sample
from course_lib.diffusion.schedules import make_schedule

torch.set_num_threads(1)
SHAPE = (4, 1, 8, 8)


def image() -> torch.Tensor:
    """One smooth 8x8 "digit" in [-0.9, 0.9], (1, 1, 8, 8)."""
    i = torch.arange(8.0)
    return (0.9 * torch.sin(i[:, None] / 2) * torch.cos(i[None, :] / 3)).view(1, 1, 8, 8)


class OneImageOracle:
    """The exact noise predictor when the data set is one image x0: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""

    def __init__(self, x0, schedule):
        self.x0, self.schedule, self.calls = x0, schedule, []

    def __call__(self, x, t, cond=None):
        self.calls.append((t.clone(), cond))
        return predict_eps_from_x0(x, t, self.x0.expand_as(x), self.schedule)


class GaussianOracle:
    """The exact noise predictor for data ~ N(0, s^2 I): E[eps | x_t] = sqrt(1 - ab) x_t / (ab s^2 + 1 - ab)."""

    def __init__(self, schedule, s=0.5):
        self.schedule, self.s = schedule, s

    def __call__(self, x, t, cond=None):
        ab = extract(self.schedule.alpha_bar, t, x)
        return (1 - ab).sqrt() * x / (ab * self.s ** 2 + 1 - ab)


def noise(seed=0, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- timesteps
def test_timesteps():
    assert S.timesteps(5).tolist() == [4, 3, 2, 1, 0]
    assert S.timesteps(10, 10).tolist() == list(range(9, -1, -1))
    assert S.timesteps(1000, 10).tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert S.timesteps(1000, 1).tolist() == [999]
    for T, steps in [(1000, 3), (1000, 7), (100, 33), (50, 49)]:
        ts = S.timesteps(T, steps)
        assert len(ts) == steps and ts[0] == T - 1 and (ts[:-1] > ts[1:]).all() and ts[-1] >= 0
    assert S.timesteps(100, [3, 50, 10]).tolist() == [50, 10, 3]
    assert S.timesteps(100, torch.tensor(4)).tolist() == S.timesteps(100, 4).tolist()   # a count, not t = 4
    for bad in (0, 11, [3, 3], [10], [-1, 2]):
        with pytest.raises(ValueError):
            S.timesteps(10, bad)


def test_respace_keeps_the_marginals_and_all_steps_is_the_schedule():
    s = make_schedule("linear", 100)
    full = S.respace(s, S.timesteps(100))
    torch.testing.assert_close(full.betas, s.betas, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(full.sqrt_one_minus_alpha_bar, s.sqrt_one_minus_alpha_bar)
    for name, T in (("cosine", 1000), ("linear", 1000)):                # float32 accuracy at every t
        s2 = make_schedule(name, T)
        torch.testing.assert_close(S.respace(s2, S.timesteps(T)).betas, s2.betas, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(full.alpha_bar_prev, s.alpha_bar_prev)
    sub = S.respace(s, torch.tensor([90, 10, 50]))
    torch.testing.assert_close(sub.alpha_bar, s.alpha_bar[[10, 50, 90]])
    torch.testing.assert_close(sub.alpha_bar_prev[1:], s.alpha_bar[[10, 50]])
    torch.testing.assert_close(torch.cumprod(sub.alphas.double(), 0).float(), sub.alpha_bar)


# --------------------------------------------------------------------------- oracle: one image
@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("sampler, kwargs", [
    ("ddpm", {}), ("ddpm", {"variance": "beta"}), ("ddpm", {"steps": 7}),
    ("ddim", {"steps": 10}), ("ddim", {"steps": 10, "eta": 1.0}), ("ddim", {"steps": 1}),
    ("ddim", {"steps": 10, "clip_x0": "dynamic"})])
def test_oracle_on_one_image_samples_that_image(name, sampler, kwargs):
    s = make_schedule(name, 50)
    x0 = image()
    out = S.SAMPLERS[sampler](OneImageOracle(x0, s), noise(), s, generator=torch.Generator().manual_seed(1),
                              **kwargs)
    assert out.shape == SHAPE and out.dtype == torch.float32
    # one step reads x0 off x_{T-1}, where sqrt(alpha_bar) ~ 1e-3 amplifies float32 rounding
    atol = 1e-3 if kwargs.get("steps") == 1 else 1e-4
    torch.testing.assert_close(out, x0.expand(SHAPE), atol=atol, rtol=0)


def test_oracle_with_t_1000_and_unclipped():
    s = make_schedule("cosine", 1000)
    x0 = image()
    out = S.ddim_sample(OneImageOracle(x0, s), noise(), s, steps=20, clip_x0=False)
    torch.testing.assert_close(out, x0.expand(SHAPE), atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- determinism and seeds
def test_ddim_eta0_is_deterministic_and_ignores_the_generator():
    s = make_schedule("cosine", 100)
    model = GaussianOracle(s)
    a = S.ddim_sample(model, noise(), s, steps=20, generator=torch.Generator().manual_seed(1))
    b = S.ddim_sample(model, noise(), s, steps=20, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, S.ddim_sample(model, noise(seed=3), s, steps=20))


@pytest.mark.parametrize("sampler, eta", [("ddpm", 1.0), ("ddim", 0.5)])
def test_same_seed_same_samples(sampler, eta):
    s = make_schedule("linear", 40)
    model = GaussianOracle(s)
    run = lambda seed: S.SAMPLERS[sampler](model, noise(), s, eta=eta, steps=20,
                                           generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(5), run(5))
    assert (run(5) - run(6)).abs().max() > 1e-2


def test_sample_convenience_is_seeded():
    s = make_schedule("cosine", 30)
    model = GaussianOracle(s)
    a = S.sample(model, 3, s, generator=torch.Generator().manual_seed(0), steps=5)
    b = S.sample(model, 3, s, generator=torch.Generator().manual_seed(0), steps=5)
    assert a.shape == (3, 1, 28, 28) and torch.equal(a, b)
    c = S.sample(model, 3, s, sampler="ddpm", generator=torch.Generator().manual_seed(0))
    assert c.shape == (3, 1, 28, 28) and torch.isfinite(c).all()
    with pytest.raises(ValueError, match="unknown sampler"):
        S.sample(model, 3, s, sampler="euler")


def test_ddim_with_eta_1_is_ddpm():
    """With sigma_t = sqrt(beta_tilde) (eta = 1, Eq. 16) DDIM's update is DDPM's ancestral step on the same
    (respaced) chain, and both draw the same noise in the same order."""
    s = make_schedule("cosine", 60)
    model = GaussianOracle(s, s=0.8)
    for steps in (None, 12):
        a = S.ddpm_sample(model, noise(), s, steps=steps, generator=torch.Generator().manual_seed(4))
        b = S.ddim_sample(model, noise(), s, steps=steps or 60, eta=1.0, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_one_ddim_step_is_eq12_and_eta1_is_the_posterior():
    s = make_schedule("linear", 100)
    g = torch.Generator().manual_seed(0)
    x0, eps, z = (torch.randn(SHAPE, generator=g) for _ in range(3))
    t = 40
    ab_t, ab_prev = s.alpha_bar[t], s.alpha_bar[t - 1]
    # eta = 0: Eq. (12) without noise, written out
    expect = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    torch.testing.assert_close(S.ddim_step(x0, eps, ab_t, ab_prev), expect)
    # eta = 1: DDPM's posterior mean and variance given the x_t that (x0, eps) came from
    x_t = q_sample(x0, t, s, noise=eps)
    mean, var, _ = q_posterior(x_t, x0, t, s)
    torch.testing.assert_close(S.ddim_step(x0, eps, ab_t, ab_prev, eta=1.0, noise=z), mean + var.sqrt() * z,
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="pass noise"):
        S.ddim_step(x0, eps, ab_t, ab_prev, eta=0.5)
    with pytest.raises(ValueError, match="scalars"):
        S.ddim_step(x0, eps, s.alpha_bar[:4], ab_prev)


# --------------------------------------------------------------------------- DDIM inversion
def ddim_invert(model, x0, s, steps):
    """Run the deterministic DDIM update upwards, x_0 -> x_T (Song et al. 2021, Sec. 4.3: the ODE view)."""
    up = S.timesteps(s.T, steps).flip(0).tolist()          # increasing timesteps
    full = lambda t: torch.full((x0.shape[0],), t)
    x = x0
    for i, t in enumerate(up):
        if i == 0:      # at x_0 itself: x0_hat is x_0, and eps is read at the lowest level
            x0_hat, eps_hat, ab_cur = x, model(x, full(up[0])), torch.tensor(1.0)
        else:           # ask the model where we are, then Eq. (12) with alpha_bar_prev > alpha_bar_t
            x0_hat, eps_hat = S.denoise(model, x, full(up[i - 1]), s, clip_x0=False)
            ab_cur = s.alpha_bar[up[i - 1]]
        x = S.ddim_step(x0_hat, eps_hat, ab_cur, s.alpha_bar[t])
    return x


def test_ddim_inverts():
    """Sample x_T -> x_0 with eta = 0, invert x_0 -> x_T': the start noise comes back, for the smooth
    Gaussian-data denoiser, with an error that shrinks like 1 / steps (DDIM is a first-order ODE solver)."""
    s = make_schedule("cosine", 200)
    model = GaussianOracle(s)
    x_T = noise()
    errors = {}
    for steps in (50, 200):
        x0 = S.ddim_sample(model, x_T, s, steps=steps, clip_x0=False)
        x_T2 = ddim_invert(model, x0, s, steps)
        errors[steps] = ((x_T2 - x_T).norm() / x_T.norm()).item()
        back = S.ddim_sample(model, x_T2, s, steps=steps, clip_x0=False)
        assert (back - x0).norm() / x0.norm() < 0.08
    assert errors[200] < 0.02, errors
    assert 3 < errors[50] / errors[200] < 5, errors          # 4x the steps, 1/4 of the error


# --------------------------------------------------------------------------- callback, clipping, cond
@pytest.mark.parametrize("sampler, steps, n", [("ddpm", None, 25), ("ddpm", 5, 5), ("ddim", 7, 7)])
def test_callback_once_per_step(sampler, steps, n):
    s = make_schedule("linear", 25)
    seen = []
    S.SAMPLERS[sampler](GaussianOracle(s), noise(), s, steps=steps, callback=seen.append,
                        generator=torch.Generator().manual_seed(0))
    assert len(seen) == n
    assert all(set(d) == {"i", "t", "x_t", "x0_hat"} for d in seen)
    assert [d["i"] for d in seen] == list(range(n))
    assert [d["t"] for d in seen] == S.timesteps(25, steps).tolist()
    assert all(d["x_t"].shape == SHAPE and d["x0_hat"].shape == SHAPE for d in seen)


class Wild:
    """A bad model whose x0 predictions fall far outside [-1, 1]."""

    def __call__(self, x, t, cond=None):
        return -3.0 * torch.ones_like(x) + 0.1 * x


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clip_keeps_x0_hat_in_range(sampler):
    s = make_schedule("cosine", 30)
    for clip in (True, "dynamic"):
        seen = []
        out = S.SAMPLERS[sampler](Wild(), noise(), s, steps=10, clip_x0=clip, callback=seen.append,
                                  generator=torch.Generator().manual_seed(0))
        assert all(d["x0_hat"].abs().max() <= 1 + 1e-6 for d in seen)
        assert out.abs().max() <= 1 + 1e-5
    seen = []
    S.SAMPLERS[sampler](Wild(), noise(), s, steps=10, clip_x0=False, callback=seen.append,
                        generator=torch.Generator().manual_seed(0))
    assert max(d["x0_hat"].abs().max() for d in seen) > 2
    seen = []                                                 # a bound b: a latent space's range
    out = S.SAMPLERS[sampler](Wild(), noise(), s, steps=10, clip_x0=2.5, callback=seen.append,
                              generator=torch.Generator().manual_seed(0))
    assert all(d["x0_hat"].abs().max() <= 2.5 + 1e-6 for d in seen) and max(d["x0_hat"].abs().max() for d in seen) > 1
    for bad in ("yes", 0, -1.0, float("nan"), None):
        with pytest.raises(ValueError, match="clip_x0"):
            S.SAMPLERS[sampler](Wild(), noise(), s, clip_x0=bad)


def test_denoise_recomputes_eps_from_the_clipped_x0():
    s = make_schedule("cosine", 30)
    x_t, t = noise(), torch.full((SHAPE[0],), 20)
    for clip in (True, "dynamic"):
        x0_hat, eps_hat = S.denoise(Wild(), x_t, t, s, clip_x0=clip)
        assert x0_hat.abs().max() <= 1
        torch.testing.assert_close(q_sample(x0_hat, t, s, noise=eps_hat), x_t)


def test_dynamic_threshold():
    x = torch.linspace(-3, 3, 1001).view(1, 1, 1, 1001)
    y = S.dynamic_threshold(x)
    s = torch.quantile(x.abs().flatten(), 0.995)
    torch.testing.assert_close(y, x.clamp(-s, s) / s)
    assert y.max() == 1 and y.min() == -1
    small = torch.linspace(-0.5, 0.8, 50).view(1, 1, 5, 10)           # s < 1: left unchanged
    assert torch.equal(S.dynamic_threshold(small), small)
    both = torch.cat([small.view(1, 1, 1, 50).expand(1, 1, 1, 50), x[..., :50] * 2])   # per image
    out = S.dynamic_threshold(both)
    assert torch.equal(out[0], both[0]) and out[1].abs().max() == 1


def test_cond_is_passed_to_the_model():
    s = make_schedule("linear", 20)
    model = OneImageOracle(image(), s)
    labels = torch.tensor([1, 2, 3, 4])
    S.ddim_sample(model, noise(), s, steps=4, cond=labels)
    assert len(model.calls) == 4 and all(c is labels for _, c in model.calls)
    assert [int(t[0]) for t, _ in model.calls] == S.timesteps(20, 4).tolist()
    assert all(t.dtype == torch.long and t.shape == (4,) for t, _ in model.calls)


def test_bad_arguments():
    s = make_schedule("linear", 20)
    with pytest.raises(ValueError, match="variance"):
        S.ddpm_sample(GaussianOracle(s), noise(), s, variance="learned")
    with pytest.raises(ValueError, match="eta"):
        S.ddim_sample(GaussianOracle(s), noise(), s, eta=-1.0)
    with pytest.raises(ValueError, match="steps"):
        S.ddim_sample(GaussianOracle(s), noise(), s, steps=21)


# --------------------------------------------------------------------------- lesson 04's exercise
def test_ddim_update_exercise(capsys):
    from course_lib.exercises.lesson04 import check_ddim_update, reference_ddim_update

    def stub(*args):
        raise NotImplementedError

    def forgot_sigma_in_direction(x0_hat, eps_hat, a_t, a_prev, eta, noise):
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        return a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps_hat + sigma * noise

    r = check_ddim_update(stub)
    assert not r and not r.attempted and "not attempted" in capsys.readouterr().out
    r = check_ddim_update(forgot_sigma_in_direction)                 # right for eta = 0 only
    out = capsys.readouterr().out
    assert not r and r.attempted and "eta = 1" in out and "hint" in out
    assert check_ddim_update(reference_ddim_update)
