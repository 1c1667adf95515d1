"""Each exercise check of lessons 01 and 02 accepts the right answer, rejects a wrong one and reports a stub
as "not attempted" without raising."""
import pytest
import torch

from course_lib.diffusion import forward as F
from course_lib.exercises import lesson01, lesson02

torch.set_num_threads(1)


def stub(*args, **kwargs):
    raise NotImplementedError


def crashes(*args, **kwargs):
    raise IndexError("a student's bug")


# lesson 01 ----------------------------------------------------------------------------------------------
def q_sample_right(x0, t, alpha_bar, noise):
    a = alpha_bar[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_sample_no_sqrt(x0, t, alpha_bar, noise):
    a = alpha_bar[t].view(-1, 1, 1, 1)
    return a * x0 + (1 - a) * noise


def alpha_bar_right(betas, t):
    return torch.prod(1 - betas[: t + 1])


def alpha_bar_off_by_one(betas, t):
    return torch.prod(1 - betas[:t])


def endpoint_right(x0, schedule, generator):
    x_T = F.q_sample(x0, schedule.T - 1, schedule, generator=generator)
    return x_T.mean(), x_T.var()


def endpoint_via_chain(x0, schedule, generator):
    x_T = F.run_chain(x0, schedule, generator=generator)
    return x_T.mean().item(), x_T.var().item()


def endpoint_halfway(x0, schedule, generator):
    x_t = F.q_sample(x0, schedule.T // 2, schedule, generator=generator)
    return x_t.mean(), x_t.var()


def endpoint_of_data(x0, schedule, generator):
    return x0.mean(), x0.var()


# lesson 02 ----------------------------------------------------------------------------------------------
def kl_right(m1, lv1, m2, lv2):
    return 0.5 * (lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 / torch.exp(lv2) - 1)


def kl_logvar_as_var(m1, lv1, m2, lv2):
    return 0.5 * (torch.log(lv2.abs() / lv1.abs()) + (lv1 + (m1 - m2) ** 2) / lv2 - 1)


def kl_no_minus_one(m1, lv1, m2, lv2):
    return 0.5 * (lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 / torch.exp(lv2))


def posterior_mean_right(x_t, t, eps, schedule):
    beta = schedule.betas[t].view(-1, 1, 1, 1)
    ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    return (x_t - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt()


def posterior_mean_via_x0(x_t, t, eps, schedule):
    """Another right answer: x0 from Eq. (15), then the posterior mean of Eq. (7)."""
    return F.q_posterior(x_t, F.predict_x0_from_eps(x_t, t, eps, schedule), t, schedule)[0]


def posterior_mean_alpha_bar(x_t, t, eps, schedule):
    beta = schedule.betas[t].view(-1, 1, 1, 1)
    ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    return (x_t - beta / (1 - ab).sqrt() * eps) / ab.sqrt()


CASES = [
    (lesson01.check_q_sample, [q_sample_right], [q_sample_no_sqrt, crashes]),
    (lesson01.check_alpha_bar_at, [alpha_bar_right], [alpha_bar_off_by_one]),
    (lesson01.check_endpoint_moments, [endpoint_right, endpoint_via_chain],
     [endpoint_halfway, endpoint_of_data, crashes]),
    (lesson02.check_gaussian_kl, [kl_right, F.gaussian_kl], [kl_logvar_as_var, kl_no_minus_one]),
    (lesson02.check_posterior_mean, [posterior_mean_right, posterior_mean_via_x0], [posterior_mean_alpha_bar]),
]
IDS = [c[0].__name__ for c in CASES]


@pytest.mark.parametrize("check, right, wrong", CASES, ids=IDS)
def test_check_accepts_right_answers(check, right, wrong, capsys):
    for fn in right:
        result = check(fn)
        assert result and result.attempted, result.message
    assert "[ok]" in capsys.readouterr().out


@pytest.mark.parametrize("check, right, wrong", CASES, ids=IDS)
def test_check_rejects_wrong_answers(check, right, wrong, capsys):
    for fn in wrong:
        result = check(fn)
        assert not result and result.attempted, f"{fn.__name__} was accepted"
        assert "hint:" in result.message and "input:" in result.message
    assert "[x]" in capsys.readouterr().out


@pytest.mark.parametrize("check, right, wrong", CASES, ids=IDS)
def test_check_reports_stub_as_not_attempted(check, right, wrong, capsys):
    result = check(stub)
    assert not result and not result.attempted
    assert "not attempted" in capsys.readouterr().out
