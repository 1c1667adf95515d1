"""Part 2's exercises (lessons 09-12): each reference solution passes its check, an untouched stub is "not
attempted", and typical wrong answers fail with a hint."""
import pytest
import torch

from course_lib.exercises import lesson09, lesson10, lesson11, lesson12
from course_lib.networks.prior import rerank


def stub(*args):
    raise NotImplementedError


# --------------------------------------------------------------------------- the references pass
@pytest.mark.parametrize("check, solution", [
    (lesson09.check_mean_pool, lesson09.reference_mean_pool),
    (lesson09.check_freeze, lesson09.reference_freeze),
    (lesson10.check_implied_noise, lesson10.reference_implied_noise),
    (lesson10.check_rerank, lesson10.reference_rerank),
    (lesson11.check_kl_term, lesson11.reference_kl_term),
    (lesson12.check_euler, lesson12.reference_euler),
    (lesson12.check_fm_loss, lesson12.reference_fm_loss),
])
def test_solution_passes_and_stub_is_not_attempted(check, solution, capsys):
    assert check(solution)
    assert "[ok]" in capsys.readouterr().out
    r = check(stub)
    assert not r and not r.attempted and "not attempted" in capsys.readouterr().out


def test_scaling_solution_passes_and_stub_is_not_attempted(capsys):
    assert lesson11.check_scaling(lesson11.reference_scale_latents, lesson11.reference_unscale)
    r = lesson11.check_scaling(stub, lesson11.reference_unscale)
    assert not r and not r.attempted
    r = lesson11.check_scaling(lesson11.reference_scale_latents, stub)
    assert not r and not r.attempted


# --------------------------------------------------------------------------- wrong answers fail
def _frozen_grads_only(enc):
    return enc.requires_grad_(False)                                 # forgets eval(): dropout stays on


def _eval_only(enc):
    return enc.eval()                                                # forgets requires_grad_(False)


def _copy(enc):
    import copy
    return lesson09.reference_freeze(copy.deepcopy(enc))


@pytest.mark.parametrize("wrong, says", [(_frozen_grads_only, "training mode"), (_eval_only, "gradients"),
                                         (_copy, "same encoder")])
def test_freeze_wrong_answers_fail(wrong, says, capsys):
    r = lesson09.check_freeze(wrong)
    out = capsys.readouterr().out
    assert not r and r.attempted and says in out and "hint:" in out


def test_rerank_wrong_answers_fail(capsys):
    assert not lesson10.check_rerank(lambda c, t: c[:, 0])                                  # always the first
    assert not lesson10.check_rerank(lambda c, t: c[torch.arange(len(c)), (c * t[:, None]).sum(-1).argmin(1)])
    assert not lesson10.check_rerank(lambda c, t: c.mean(1))                                # averages them
    assert "hint:" in capsys.readouterr().out


def test_rerank_refuses_bad_shapes():
    with pytest.raises(ValueError, match="candidates"):
        rerank(torch.randn(3, 64), torch.randn(3, 64))


def test_scaling_wrong_answers_fail(capsys):
    std_not_inverse = lambda z: (float(z.std()), z * z.std())
    per_channel = lambda z: (float(1 / z.std()), z / z.std(dim=(0, 2, 3), keepdim=True))
    standardised = lambda z: (float(1 / z.std()), (z - z.mean()) / z.std())               # removes the mean
    for wrong in (std_not_inverse, per_channel, standardised):
        assert not lesson11.check_scaling(wrong, lesson11.reference_unscale)
    assert not lesson11.check_scaling(lesson11.reference_scale_latents, lambda z, s: z * s)  # multiplies again
    assert "hint:" in capsys.readouterr().out


def test_fm_loss_wrong_answers_fail(capsys):
    def flipped_time(v, x0, eps, t):                                 # Liu et al.'s convention: t = 0 is noise
        tt = t.view(-1, *[1] * (x0.dim() - 1))
        return (v(tt * x0 + (1 - tt) * eps, t) - (eps - x0)).pow(2).mean()

    def flipped_target(v, x0, eps, t):                               # x0 - eps
        tt = t.view(-1, *[1] * (x0.dim() - 1))
        return (v((1 - tt) * x0 + tt * eps, t) - (x0 - eps)).pow(2).mean()

    def ddpm_target(v, x0, eps, t):                                  # predicts the noise, as in lesson 03
        tt = t.view(-1, *[1] * (x0.dim() - 1))
        return (v((1 - tt) * x0 + tt * eps, t) - eps).pow(2).mean()

    for wrong in (flipped_time, flipped_target, ddpm_target):
        assert not lesson12.check_fm_loss(wrong)
    assert "hint:" in capsys.readouterr().out


def test_fm_loss_reference_is_the_library_loss():
    """flow.flow_loss with the same t and eps (uniform t drawn from the same generator) gives the same number."""
    from course_lib.diffusion.flow import TIME_SCALE, flow_loss, sample_time
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, 1, 4, 4)
    model = lambda x, ts, cond=None: 0.3 * x + ts.view(-1, 1, 1, 1) / TIME_SCALE
    lib = flow_loss(model, x0, time="uniform", generator=g)
    g = torch.Generator().manual_seed(3)
    t = sample_time(5, "uniform", g)
    eps = torch.randn(x0.shape, generator=g)
    ours = lesson12.reference_fm_loss(lambda x, tt: model(x, tt * TIME_SCALE), x0, eps, t)
    assert torch.allclose(lib, ours, atol=1e-6)
