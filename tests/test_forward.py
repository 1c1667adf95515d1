"""The forward process (DDPM Eqs. 2, 4, 6-7, 15), the Gaussian KL, the discretised decoder and the losses.

Statistical tests compare sample moments with exact ones within 5 standard errors (seeded, so they are
deterministic; a correct implementation fails one such comparison with probability ~6e-7).
"""
import math

import numpy as np
import pytest
import torch

from course_lib.diffusion import forward as F
from course_lib.diffusion.schedules import make_schedule

torch.set_num_threads(1)

NAMES = ["linear", "cosine"]
Z = 5.0   # standard errors allowed in statistical comparisons


def moments_match(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Sample mean and variance over dim 0 agree with the exact ones within Z standard errors.

    Standard errors for Gaussian samples: sqrt(var / N) for the mean, var * sqrt(2 / N) for the variance.
    """
    N = samples.shape[0]
    s = samples.double()
    mean, var = mean.double().expand_as(s[0]), var.double().expand_as(s[0])
    err_mean = (s.mean(0) - mean).abs()
    err_var = (s.var(0) - var).abs()
    assert (err_mean <= Z * (var / N).sqrt()).all(), f"means differ by up to {err_mean.max():.3g}"
    assert (err_var <= Z * var * math.sqrt(2 / N)).all(), f"variances differ by up to {err_var.max():.3g}"


# ------------------------------------------------------------------------------------------- extract
def test_extract_shapes_and_values():
    v = torch.arange(10.0)
    x = torch.zeros(3, 1, 4, 4)
    out = F.extract(v, torch.tensor([0, 4, 9]), x)
    assert out.shape == (3, 1, 1, 1) and out.flatten().tolist() == [0.0, 4.0, 9.0]
    assert F.extract(v, 7, x).flatten().tolist() == [7.0] * 3
    assert F.extract(v, torch.tensor(2), torch.zeros(5, 2)).shape == (5, 1)
    assert F.extract(v, 1, x.double()).dtype == torch.float64
    assert F.extract(v, np.int64(3), x).flatten().tolist() == [3.0] * 3


@pytest.mark.parametrize("bad_t, match", [(10, "0..9"), (-1, "0..9"), (torch.tensor([0, 1]), "shape"),
                                          (torch.tensor([0.0, 1.0, 2.0]), "integer"),
                                          (torch.tensor([0, 5, 10]), "0..9"), (1.5, "int")])
def test_extract_rejects_bad_timesteps(bad_t, match):
    with pytest.raises(ValueError, match=match):
        F.extract(torch.arange(10.0), bad_t, torch.zeros(3, 1, 2, 2))


def test_noise_shape_is_checked():
    s = make_schedule("linear", 10)
    with pytest.raises(ValueError, match="noise must have the shape"):
        F.q_sample(torch.zeros(2, 1, 4, 4), 0, s, noise=torch.zeros(1, 1, 4, 4))


# ------------------------------------------------------------------------------- Eq. 2 versus Eq. 4
def test_q_step_is_eq2():
    s = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 1, 3, 3, generator=g), torch.randn(2, 1, 3, 3, generator=g)
    t = torch.tensor([5, 700])
    beta = s.betas[t].view(2, 1, 1, 1)
    torch.testing.assert_close(F.q_step(x, t, s, noise=eps), (1 - beta).sqrt() * x + beta.sqrt() * eps)


def test_q_sample_is_eq4_and_reproducible():
    s = make_schedule("cosine", 100)
    x0 = torch.linspace(-1, 1, 8).view(2, 1, 2, 2)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 90])
    ab = s.alpha_bar[t].view(2, 1, 1, 1)
    torch.testing.assert_close(F.q_sample(x0, t, s, noise=eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    a = F.q_sample(x0, t, s, generator=torch.Generator().manual_seed(7))
    b = F.q_sample(x0, t, s, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_closed_form_matches_iterated_chain_in_distribution(name):
    """DDPM Eq. (4) and T applications of Eq. (2) give the same mean sqrt(ab) x0 and variance 1 - ab."""
    s = make_schedule(name, 1000)
    N = 4000
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0]).view(1, 1, 2, 2).expand(N, 1, 2, 2).contiguous()
    states = F.run_chain(x0, s, generator=torch.Generator().manual_seed(0), return_all=True)
    assert len(states) == s.T + 1 and states[0] is x0
    g = torch.Generator().manual_seed(1)
    for t in [0, 10, 100, 500, 900, 999]:
        ab = s.alpha_bar[t]
        mean, var = ab.sqrt() * x0[0], (1 - ab)
        moments_match(states[t + 1], mean, var)                       # the chain, t + 1 steps
        moments_match(F.q_sample(x0, t, s, generator=g), mean, var)   # the closed form


def test_run_chain_stops_and_repeats():
    s = make_schedule("linear", 50)
    x0 = torch.zeros(3, 1, 4, 4)
    a = F.run_chain(x0, s, t_stop=9, generator=torch.Generator().manual_seed(3))
    states = F.run_chain(x0, s, t_stop=9, generator=torch.Generator().manual_seed(3), return_all=True)
    assert len(states) == 11 and torch.equal(states[-1], a)
    with pytest.raises(ValueError, match="t_stop"):
        F.run_chain(x0, s, t_stop=50)


# ------------------------------------------------------------------------------- Eq. 15 inverts Eq. 4
@pytest.mark.parametrize("name", NAMES)
def test_x0_formula_inverts_q_sample(name):
    s = make_schedule(name, 1000)
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([0, 1, 50, 500, 900, 999])
    x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    x_t = F.q_sample(x0, t, s, noise=eps)
    torch.testing.assert_close(F.predict_x0_from_eps(x_t, t, eps, s), x0, rtol=0, atol=1e-8)
    torch.testing.assert_close(F.predict_eps_from_x0(x_t, t, x0, s), eps, rtol=0, atol=1e-8)
    # float32, away from the very last step where sqrt(alpha_bar) ~ 5e-5 amplifies rounding
    x0f, epsf, tf = x0.float()[:5], eps.float()[:5], t[:5]
    x_tf = F.q_sample(x0f, tf, s, noise=epsf)
    torch.testing.assert_close(F.predict_x0_from_eps(x_tf, tf, epsf, s), x0f, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------- the posterior, Eqs. 6-7
def bayes_on_grid(x0: float, x_t: float, t: int, s, n: int = 400_001) -> tuple[float, float]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) ~ q(x_t | x_{t-1}) q(x_{t-1} | x_0) on a 1-D grid."""
    beta, alpha = float(s.betas[t]), float(s.alphas[t])
    # q(x_{t-1} | x_0), Eq. (4), from the float64-computed square roots (1 - alpha_bar cancels in float32)
    m_prior, v_prior = float(s.sqrt_alpha_bar[t - 1]) * x0, float(s.sqrt_one_minus_alpha_bar[t - 1]) ** 2
    grid = np.linspace(m_prior - 12 * math.sqrt(v_prior), m_prior + 12 * math.sqrt(v_prior), n)
    log_p = (-(grid - m_prior) ** 2 / (2 * v_prior)                    # log q(x_{t-1} | x_0)
             - (x_t - math.sqrt(alpha) * grid) ** 2 / (2 * beta))     # log q(x_t | x_{t-1}), Eq. (2)
    w = np.exp(log_p - log_p.max())
    w /= w.sum()
    mean = float((w * grid).sum())
    return mean, float((w * (grid - mean) ** 2).sum())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [1, 5, 100, 500, 990])
def test_posterior_is_bayes_rule(name, t):
    s = make_schedule(name, 1000)
    x0 = 0.7
    x_t = float(F.q_sample(torch.full((1, 1), x0), t, s, generator=torch.Generator().manual_seed(t)))
    mean, var, log_var = F.q_posterior(torch.full((1, 1), x_t), torch.full((1, 1), x0), t, s)
    b_mean, b_var = bayes_on_grid(x0, x_t, t, s)
    assert math.isclose(mean.item(), b_mean, rel_tol=1e-5, abs_tol=1e-3 * math.sqrt(b_var))
    assert math.isclose(var.item(), b_var, rel_tol=1e-4)
    assert math.isclose(log_var.exp().item(), var.item(), rel_tol=1e-5)


def test_posterior_at_t0_is_degenerate_and_finite():
    s = make_schedule("cosine", 100)
    x0, x_t = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    mean, var, log_var = F.q_posterior(x_t, x0, 0, s)
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all() and torch.isfinite(log_var).all()
    torch.testing.assert_close(log_var, F.q_posterior(x_t, x0, 1, s)[2])   # clipped as in Ho et al.'s code


@pytest.mark.parametrize("name", NAMES)
def test_posterior_mean_from_true_noise_is_eq7(name):
    s = make_schedule(name, 1000)
    g = torch.Generator().manual_seed(5)
    t = torch.tensor([0, 1, 10, 300, 700, 990])
    x0, eps = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1, torch.randn(6, 1, 4, 4, generator=g)
    x_t = F.q_sample(x0, t, s, noise=eps)
    torch.testing.assert_close(F.posterior_mean_from_eps(x_t, t, eps, s), F.q_posterior(x_t, x0, t, s)[0],
                               rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------- Gaussian KL
def test_kl_of_identical_gaussians_is_zero():
    g = torch.Generator().manual_seed(0)
    m, lv = torch.randn(100, generator=g), torch.randn(100, generator=g)
    assert F.gaussian_kl(m, lv, m, lv).abs().max() < 1e-6
    assert F.gaussian_kl(0.0, 0.0, torch.zeros(3), 0.0).abs().max() == 0


@pytest.mark.parametrize("m1, v1, m2, v2", [(0.0, 1.0, 1.0, 4.0), (0.5, 0.1, -0.3, 0.2), (2.0, 3.0, 0.0, 1.0)])
def test_kl_matches_monte_carlo(m1, v1, m2, v2):
    """KL = E_{x ~ N1}[log N1(x) - log N2(x)], estimated from 200,000 samples."""
    x = m1 + math.sqrt(v1) * torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_n = lambda x, m, v: -0.5 * (math.log(2 * math.pi * v) + (x - m) ** 2 / v)
    diff = log_n(x, m1, v1) - log_n(x, m2, v2)
    mc, se = diff.mean().item(), diff.std().item() / math.sqrt(x.numel())
    kl = F.gaussian_kl(torch.tensor(m1), torch.tensor(math.log(v1)), torch.tensor(m2), torch.tensor(math.log(v2)))
    assert abs(kl.item() - mc) <= Z * se
    assert kl.item() > 0


# ------------------------------------------------------------------------------- the decoder L_0
@pytest.mark.parametrize("mean, log_scale", [(0.3, -1.0), (-0.99, -4.0), (0.0, 1.0)])
def test_discretized_likelihood_sums_to_one_over_the_256_bins(mean, log_scale):
    x = (torch.arange(256, dtype=torch.float64) / 127.5 - 1).view(256, 1, 1, 1)
    logp = F.discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.tensor(log_scale))
    assert (logp <= 0).all()
    assert abs(torch.logsumexp(logp.flatten(), 0).item()) < 1e-6


# ------------------------------------------------------------------------------- ELBO and L_simple
def _tiny_setup(T=20):
    s = make_schedule("cosine", T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (3, 1, 6, 6), generator=g).float() / 127.5 - 1
    zero = lambda x, t, cond=None: torch.zeros_like(x)
    oracle = lambda x, t, cond=None: F.predict_eps_from_x0(x, t, x0, s)   # knows x0: a one-image dataset
    return s, x0, zero, oracle


def test_elbo_terms_shapes_total_and_eq12_weights():
    s, x0, zero, _ = _tiny_setup()
    out = F.elbo_terms(zero, x0, s, generator=torch.Generator().manual_seed(1))
    assert out["terms"].shape == (3, s.T) and out["mse"].shape == (3, s.T) and out["prior"].shape == (3,)
    assert out["units"] == "nats" and torch.equal(out["t"], torch.arange(s.T))
    torch.testing.assert_close(out["total"], out["prior"] + out["terms"].sum(1))
    # DDPM Eq. (12): each KL term is a weighted squared noise error (summed over the D = 36 dimensions)
    D = x0[0].numel()
    w = F.elbo_weights(s)
    torch.testing.assert_close(out["terms"][:, 1:], w[1:] * D * out["mse"][:, 1:], rtol=1e-3, atol=1e-4)
    assert (out["terms"] >= 0).all()


def test_elbo_of_oracle_is_decoder_only_and_bits_per_dim_scale():
    s, x0, zero, oracle = _tiny_setup()
    nats = F.elbo_terms(oracle, x0, s, t=[0, 3, 19], generator=torch.Generator().manual_seed(1))
    assert nats["terms"][:, 1:].abs().max() < 1e-4                       # the KL terms vanish
    assert (nats["terms"][:, 0] > 0).all() and nats["mse"].max() < 1e-8
    bpd = F.elbo_terms(oracle, x0, s, t=[0, 3, 19], generator=torch.Generator().manual_seed(1),
                       bits_per_dim=True)
    torch.testing.assert_close(bpd["terms"], nats["terms"] / (x0[0].numel() * math.log(2)))
    assert bpd["units"] == "bits/dim"
    worse = F.elbo_terms(zero, x0, s, t=[0, 3, 19], generator=torch.Generator().manual_seed(1))
    assert (worse["total"] > nats["total"]).all()


@pytest.mark.parametrize("name", NAMES)
def test_elbo_prior_term_is_gaussian_kl_to_standard_normal(name):
    s = make_schedule(name, 1000)
    x0 = torch.linspace(-1, 1, 2 * 16).view(2, 1, 4, 4)
    out = F.elbo_terms(lambda x, t, cond=None: torch.zeros_like(x), x0, s, t=0)
    ab = s.alpha_bar[-1].double()
    kl = F.gaussian_kl(ab.sqrt() * x0.double(), torch.log(1 - ab), 0.0, 0.0).sum((1, 2, 3))
    torch.testing.assert_close(out["prior"].double(), kl, rtol=1e-4, atol=0)
    assert (out["prior"] > 0).all()


def test_elbo_rejects_bad_t_and_bad_model_output():
    s, x0, zero, _ = _tiny_setup()
    with pytest.raises(ValueError, match="0..19"):
        F.elbo_terms(zero, x0, s, t=[20])
    with pytest.raises(ValueError, match="must return eps of shape"):
        F.elbo_terms(lambda x, t, cond=None: x[:, :, :2], x0, s, t=1)


def test_simple_loss_is_eq14():
    s, x0, zero, oracle = _tiny_setup(T=50)
    g = torch.Generator().manual_seed(0)
    t, eps = torch.tensor([0, 20, 49]), torch.randn(x0.shape, generator=g)
    model = lambda x, t, cond=None: 0.5 * x + cond
    got = simple_loss = F.simple_loss(model, x0, s, t=t, noise=eps, cond=0.1)
    x_t = F.q_sample(x0, t, s, noise=eps)
    torch.testing.assert_close(got, ((0.5 * x_t + 0.1 - eps) ** 2).mean())
    assert simple_loss.dim() == 0
    assert F.simple_loss(oracle, x0, s, generator=g) < 1e-8
    a = F.simple_loss(zero, x0, s, generator=torch.Generator().manual_seed(4))
    b = F.simple_loss(zero, x0, s, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_simple_loss_of_zero_predictor_is_one():
    """Predicting no noise scores E||eps||^2 / D = 1, whatever t is."""
    s = make_schedule("linear", 100)
    x0 = torch.zeros(64, 1, 8, 8)
    loss = F.simple_loss(lambda x, t, cond=None: torch.zeros_like(x), x0, s, generator=torch.Generator().manual_seed(0))
    assert abs(loss.item() - 1) < Z * math.sqrt(2 / x0.numel())


class _Fixed(torch.nn.Module):
    def forward(self, x, t, cond=None):
        return 0.3 * x


def test_min_snr_weight_caps_the_snr_and_reweights_the_simple_loss():
    """w_t = min(SNR_t, 5) / SNR_t: 1 where the step is noisy, gamma / SNR_t below; the loss draws the same
    t and noise with and without it, and only the per-example weights differ."""
    s = make_schedule("cosine", 1000)
    w = F.min_snr_weight(s, 5.0)
    assert w.shape == (1000,) and (w > 0).all() and (w <= 1).all()
    assert torch.allclose(w[s.snr <= 5], torch.ones(1)) and torch.allclose(w[s.snr > 5], 5 / s.snr[s.snr > 5])
    x0 = torch.rand(8, 1, 28, 28) * 2 - 1
    plain, parts = F.simple_loss(_Fixed(), x0, s, generator=torch.Generator().manual_seed(0), return_parts=True)
    assert torch.allclose(plain, parts["per_example"].mean())
    assert torch.equal(plain, F.simple_loss(_Fixed(), x0, s, generator=torch.Generator().manual_seed(0)))
    weighted, parts_w = F.simple_loss(_Fixed(), x0, s, generator=torch.Generator().manual_seed(0),
                                      min_snr_gamma=5.0, return_parts=True)
    assert torch.equal(parts["t"], parts_w["t"])
    expected = (parts["per_example"] * F.min_snr_weight(s, 5.0, parts["t"])).mean()
    assert torch.allclose(weighted, expected) and not torch.allclose(weighted, plain)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="min_snr_gamma"):
            F.min_snr_weight(s, bad)
