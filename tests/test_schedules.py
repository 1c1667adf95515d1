"""Noise schedules: shapes, monotonicity, end points, and the published values they are built from."""
import math

import pytest
import torch

from course_lib.diffusion.schedules import alpha_bar_from_betas, cosine_betas, linear_betas, make_schedule

torch.set_num_threads(1)

NAMES = ["linear", "cosine"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [10, 100, 1000])
def test_alpha_bar_decreases_inside_unit_interval(name, T):
    s = make_schedule(name, T)
    assert s.alpha_bar.shape == (T,) and s.alpha_bar.dtype == torch.float32
    assert (s.alpha_bar > 0).all() and (s.alpha_bar < 1).all()
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all(), "alpha_bar must decrease strictly"
    assert (s.betas > 0).all() and (s.betas < 1).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [10, 100, 1000])
def test_endpoint_is_almost_pure_noise(name, T):
    # Ho et al. 2020, Sec. 4: L_T = KL(q(x_T|x_0) || N(0, I)) ~ 1e-5 bits/dim for the linear schedule, T = 1000.
    assert make_schedule(name, T).alpha_bar[-1] < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_snr_monotone_and_consistent(name):
    s = make_schedule(name, 1000)
    assert (s.snr[1:] < s.snr[:-1]).all(), "SNR must decrease strictly"
    assert torch.isfinite(s.log_snr).all()
    # 1 - alpha_bar from the float64-computed square root: in float32, 1 - alpha_bar_0 (~4e-5) cancels
    torch.testing.assert_close(s.snr, s.alpha_bar / s.sqrt_one_minus_alpha_bar ** 2, rtol=1e-5, atol=0)
    torch.testing.assert_close(s.log_snr.exp(), s.snr, rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_derived_quantities(name):
    s = make_schedule(name, 200)
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    torch.testing.assert_close(s.alpha_bar, torch.cumprod(s.alphas.double(), 0).float(), rtol=1e-5, atol=1e-7)
    assert s.alpha_bar_prev[0] == 1 and torch.equal(s.alpha_bar_prev[1:], s.alpha_bar[:-1])
    torch.testing.assert_close(s.sqrt_alpha_bar ** 2, s.alpha_bar, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s.sqrt_one_minus_alpha_bar ** 2, 1 - s.alpha_bar, rtol=1e-5, atol=1e-7)
    assert s.T == 200


def test_linear_matches_ho_et_al():
    b = linear_betas(1000)
    assert math.isclose(b[0].item(), 1e-4) and math.isclose(b[-1].item(), 0.02)


def test_linear_small_T_is_clipped_not_singular():
    b = linear_betas(10)
    assert b.max() <= 0.999
    assert (alpha_bar_from_betas(b) > 0).all()


def test_cosine_follows_nichol_dhariwal_eq17():
    T, s = 1000, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    ab = alpha_bar_from_betas(cosine_betas(T))
    for t in [0, 100, 500, 900]:           # index t is the paper's step t + 1
        assert math.isclose(ab[t].item(), f(t + 1) / f(0), rel_tol=1e-9)
    assert cosine_betas(T).max() <= 0.999


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="T must be"):
        linear_betas(0)


def test_to_device_keeps_values():
    s = make_schedule("cosine", 50)
    s2 = s.to("cpu")
    assert s2.name == "cosine" and torch.equal(s2.alpha_bar, s.alpha_bar)
