"""Guidance methods of issue 36 (``diffusion/guidance.py``): each knob at its neutral value is plain CFG
bit for bit, each method does what its paper's equation says, every bad knob is refused before any network
call, the conversions to x0 agree with the library's own, and ``drop_condition`` draws exactly what the
three training loops drew before it replaced them."""
import math
from types import SimpleNamespace

import pytest
import torch

from course_lib.diffusion import flow
from course_lib.diffusion.forward import predict_x0_from_eps
from course_lib.diffusion.guidance import (
    AutoGuided, Guided, Prediction, apg_update, cfg_combine, drop_condition, from_settings, network_passes,
    null_labels, rescale_x0,
)
from course_lib.diffusion.samplers import dynamic_threshold, sample, timesteps
from course_lib.diffusion.schedules import make_schedule

SCHEDULE = make_schedule("cosine", 1000)


class Dummy(torch.nn.Module):
    """Elementwise in x, depends on t and the label; counts the images it is called on."""

    def __init__(self, scale=0.5, amp=0.1):
        super().__init__()
        self.scale, self.amp, self.images = scale, amp, 0
        self.config = SimpleNamespace(num_classes=10)           # a class model, for the samplers' label check

    def forward(self, x, t, cond=None):
        self.images += x.shape[0]
        label = torch.full((x.shape[0],), -1.0) if cond is None else cond.float()
        return (self.scale * x + 1e-4 * t.float().view(-1, 1, 1, 1)
                + self.amp * (label + 1).view(-1, 1, 1, 1) * torch.linspace(-1, 1, x[0].numel()).view(x[0].shape))


def inputs(B=4, seed=0, t=500, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(B, 1, 28, 28, generator=g), torch.full((B,), t, dtype=torch.long),
            torch.randint(0, 10, (B,), generator=g))


PREDS = {"eps": Prediction("eps", SCHEDULE), "x0": Prediction("x0"), "v": Prediction("v", SCHEDULE),
         "flow": Prediction("flow", time_scale=flow.TIME_SCALE)}


# --------------------------------------------------------------------------- neutral knobs = plain CFG
@pytest.mark.parametrize("pred", list(PREDS))
@pytest.mark.parametrize("knobs", [dict(interval=(0, 1000)), dict(phi=0.0),
                                   dict(eta=1.0, momentum=0.0, norm_threshold=math.inf), dict(percentile=1.0)])
@torch.no_grad()
def test_each_method_at_its_neutral_knob_is_plain_cfg_exactly(pred, knobs):
    # small inputs at low noise, so every predicted x0 is inside [-1, 1]: thresholding at p = 1 changes nothing
    x, t, y = inputs(scale=0.05, t=100)
    dummy = Dummy(scale=0.5, amp=0.01)
    if pred == "flow":
        t = t.float()
    plain = Guided(dummy, 3.0)(x, t, y)
    assert PREDS[pred].to_x0(plain, x, t).abs().max() < 1
    for _ in range(3):                                   # and on later steps (APG's momentum buffer)
        assert torch.equal(Guided(dummy, 3.0, prediction=PREDS[pred], **knobs)(x, t, y), plain)
    assert torch.equal(plain, cfg_combine(dummy(x, t, null_labels(y)), dummy(x, t, y), 3.0))


# --------------------------------------------------------------------------- each method's equation
@torch.no_grad()
def test_interval_guides_inside_and_is_one_conditional_pass_outside():
    dummy = Dummy()
    x, _, y = inputs()
    g = Guided(dummy, 3.0, interval=(200, 600), prediction=PREDS["eps"])
    for t, guided_here in ((100, False), (200, True), (600, True), (601, False), (999, False)):
        tt = torch.full((4,), t)
        dummy.images = 0
        out = g(x, tt, y)
        if guided_here:
            assert dummy.images == 8 and torch.equal(out, Guided(dummy, 3.0)(x, tt, y))
        else:
            assert dummy.images == 4 and torch.equal(out, dummy(x, tt, y))
    mixed = torch.tensor([100, 300, 700, 500])          # rows inside and outside in one batch
    out = g(x, mixed, y)
    for i in range(4):
        assert torch.allclose(out[i:i + 1], g(x[i:i + 1], mixed[i:i + 1], y[i:i + 1]), atol=1e-6)


def test_network_passes_counts_the_unguided_steps_once():
    ts = timesteps(1000, 25)
    assert network_passes({"guidance": 3.0}, ts) == 50                         # plain CFG, DDIM-25
    assert network_passes({"guidance": 1.0}, ts) == 25
    inside = int(((ts >= 0) & (ts <= 500)).sum())
    assert network_passes({"guidance": 3.0, "method": "interval", "interval": [0, 500]}, ts) == 25 + inside


@pytest.mark.parametrize("pred", ["eps", "v", "flow"])
@torch.no_grad()
def test_rescale_matches_lin_et_al_in_x0(pred):
    dummy = Dummy()
    x, t, y = inputs(t=700)
    t = t.float() if pred == "flow" else t
    P = PREDS[pred]
    out = Guided(dummy, 4.0, phi=0.7, prediction=P)(x, t, y)
    p_c, p_u = dummy(x, t, y), dummy(x, t, null_labels(y))
    x_cfg, x_pos = P.to_x0(cfg_combine(p_u, p_c, 4.0), x, t), P.to_x0(p_c, x, t)
    std = lambda v: v.flatten(1).std(1).view(-1, 1, 1, 1)                      # noqa: E731
    want = 0.7 * x_cfg * std(x_pos) / std(x_cfg) + 0.3 * x_cfg                # Lin et al. 2024, Sec. 3.4
    torch.testing.assert_close(P.to_x0(out, x, t), want, atol=1e-4, rtol=1e-4)
    assert torch.allclose(std(P.to_x0(Guided(dummy, 4.0, phi=1.0, prediction=P)(x, t, y), x, t)), std(x_pos),
                          rtol=1e-3)
    torch.testing.assert_close(rescale_x0(x_cfg, x_pos, 0.0), x_cfg, atol=0, rtol=0)


@torch.no_grad()
def test_apg_drops_the_parallel_part_caps_the_norm_and_reverses_momentum():
    g = torch.Generator().manual_seed(1)
    d_c, d_u = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    upd, _ = apg_update(d_c, d_u, eta=0.0)
    assert torch.allclose((upd * d_c).flatten(1).sum(1), torch.zeros(3), atol=1e-5)     # orthogonal to D_cond
    upd1, _ = apg_update(d_c, d_u, eta=1.0)
    torch.testing.assert_close(upd1, d_c - d_u)                                          # eta = 1: CFG's update
    capped, _ = apg_update(d_c, d_u, eta=1.0, norm_threshold=0.5)
    assert torch.allclose(capped.flatten(1).norm(dim=1), torch.full((3,), 0.5), atol=1e-5)
    prev = torch.randn(3, 1, 8, 8, generator=g)
    mom, running = apg_update(d_c, d_u, eta=1.0, previous=prev, momentum=0.5)
    torch.testing.assert_close(mom, d_c - d_u - 0.5 * prev)                              # beta = -0.5
    torch.testing.assert_close(running, mom)


@torch.no_grad()
def test_apg_in_the_wrapper_is_cond_plus_w_minus_1_times_the_update_in_x0_and_keeps_momentum_per_chain():
    dummy = Dummy()
    P = PREDS["eps"]
    x, t, y = inputs(t=800)
    g = Guided(dummy, 3.0, eta=0.0, momentum=0.5, prediction=P)
    out1 = g(x, t, y)
    d_c, d_u = P.to_x0(dummy(x, t, y), x, t), P.to_x0(dummy(x, t, null_labels(y)), x, t)
    upd, run1 = apg_update(d_c, d_u, eta=0.0)
    torch.testing.assert_close(P.to_x0(out1, x, t), d_c + 2.0 * upd, atol=1e-4, rtol=1e-4)
    t2 = torch.full((4,), 700)
    out2 = g(x, t2, y)                                                        # the next step: momentum applies
    d_c2, d_u2 = P.to_x0(dummy(x, t2, y), x, t2), P.to_x0(dummy(x, t2, null_labels(y)), x, t2)
    upd2, _ = apg_update(d_c2, d_u2, eta=0.0, previous=run1, momentum=0.5)
    torch.testing.assert_close(P.to_x0(out2, x, t2), d_c2 + 2.0 * upd2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g(x, t, y), out1)                              # t went up: a new chain


@torch.no_grad()
def test_threshold_is_imagens_dynamic_threshold_of_the_guided_x0():
    dummy = Dummy(scale=2.0)                                                   # saturating predictions
    P = PREDS["x0"]
    x, t, y = inputs()
    out = Guided(dummy, 5.0, percentile=0.9, prediction=P)(x, t, y)
    torch.testing.assert_close(out, dynamic_threshold(Guided(dummy, 5.0)(x, t, y), 0.9))
    assert out.abs().max() <= 1.0 + 1e-6


def test_predictions_agree_with_the_librarys_conversions():
    x, t, _ = inputs(t=300)
    out = torch.randn_like(x)
    torch.testing.assert_close(PREDS["eps"].to_x0(out, x, t), predict_x0_from_eps(x, t, out, SCHEDULE))
    tf = torch.full((4,), 0.3)
    torch.testing.assert_close(PREDS["flow"].to_x0(out, x, tf * flow.TIME_SCALE), flow.x0_from_v(x, tf, out))
    for name, P in PREDS.items():                     # the slope is d x0 / d out: x0 is affine in out
        tt = t.float() if name == "flow" else t
        h = 1e-2
        fd = (P.to_x0(out + h, x, tt) - P.to_x0(out, x, tt)) / h
        torch.testing.assert_close(fd, P.slope(x, tt).expand_as(fd), atol=1e-2, rtol=1e-3)


# --------------------------------------------------------------------------- bad input, before any compute
BAD = [
    (dict(interval=(-1, 500)), "0 <= lo <= hi <= T"), (dict(interval=(0, 1001)), "0 <= lo <= hi <= T"),
    (dict(interval=(600, 500)), "0 <= lo <= hi <= T"), (dict(interval=(float("nan"), 5)), "must be a number"),
    (dict(interval=(1, 2, 3)), "a pair"), (dict(percentile=0.0), r"\(0, 1\]"), (dict(percentile=1.5), r"\(0, 1\]"),
    (dict(percentile=float("nan")), "must be a number"), (dict(phi=-0.1), ">= 0"),
    (dict(phi=float("nan")), "must be a number"), (dict(momentum=-0.5), ">= 0"), (dict(eta=-1.0), ">= 0"),
    (dict(eta=float("nan")), "must be a number"), (dict(norm_threshold=0.0), "> 0"),
    (dict(norm_threshold=-2.0), ">= 0"),
]


@pytest.mark.parametrize("knobs,match", BAD)
def test_bad_knobs_are_refused_in_one_line_before_any_network_call(knobs, match):
    dummy = Dummy()
    with pytest.raises(ValueError, match=match) as e:
        Guided(dummy, 3.0, prediction=PREDS["eps"], **knobs)
    assert "\n" not in str(e.value) and dummy.images == 0
    with pytest.raises(ValueError, match=match):
        from_settings(dummy, {"guidance": 3.0, **{k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in knobs.items()}}, prediction=PREDS["eps"])
    assert dummy.images == 0


def test_flow_interval_is_checked_against_its_time_scale():
    Guided(Dummy(), 2.0, interval=(0, 1000), prediction=PREDS["flow"])
    with pytest.raises(ValueError, match="T = 1000"):
        Guided(Dummy(), 2.0, interval=(0, 1001), prediction=PREDS["flow"])


@pytest.mark.parametrize("settings,match", [
    ({"guidance": 3.0, "method": "cfg++"}, "unknown guidance method"),
    ({"guidance": 3.0, "phy": 0.7}, "unknown guidance settings"),
    ({"method": "cfg"}, "need 'guidance'"),
    ({"guidance": float("nan")}, "finite number"),
    ({"guidance": 3.0, "method": "interval"}, "needs \\['interval'\\]"),
    ({"guidance": 3.0, "method": "autoguidance"}, "needs guide="),
])
def test_from_settings_refuses_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        from_settings(Dummy(), settings, prediction=PREDS["eps"])


def test_methods_that_need_x0_refuse_to_run_without_a_prediction():
    with pytest.raises(ValueError, match="prediction="):
        Guided(Dummy(), 3.0, phi=0.7)
    with pytest.raises(ValueError, match="needs its schedule"):
        Prediction("eps")
    with pytest.raises(ValueError, match="prediction must be one of"):
        Prediction("score")


@torch.no_grad()
def test_from_settings_builds_each_method_and_they_run_in_the_samplers():
    dummy = Dummy(scale=0.1)
    y = torch.arange(4)
    plain = sample(Guided(dummy, 2.0), 4, SCHEDULE, steps=5, generator=torch.Generator().manual_seed(0), cond=y)
    again = sample(from_settings(dummy, {"guidance": 2.0, "method": "cfg", "sampler": "ddim", "steps": 5}),
                   4, SCHEDULE, steps=5, generator=torch.Generator().manual_seed(0), cond=y)
    assert torch.equal(plain, again)
    for s in ({"method": "interval", "interval": [0, 500]}, {"method": "rescale", "phi": 0.7},
              {"method": "apg", "eta": 0.0, "momentum": 0.5, "norm_threshold": 20.0},
              {"method": "threshold", "percentile": 0.95}):
        out = sample(from_settings(dummy, {"guidance": 3.0, **s}, prediction=PREDS["eps"]), 4, SCHEDULE, steps=5,
                     generator=torch.Generator().manual_seed(0), cond=y)
        assert out.shape == (4, 1, 28, 28) and torch.isfinite(out).all() and not torch.equal(out, plain)
    auto = from_settings(dummy, {"guidance": 2.0, "method": "autoguidance"}, guide=Dummy(scale=0.2))
    assert isinstance(auto, AutoGuided)


# --------------------------------------------------------------------------- training's condition dropout
def test_drop_condition_draws_exactly_what_the_training_loops_drew_before():
    labels, p = torch.arange(10).repeat(50), 0.3
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    old = torch.where(torch.rand(labels.shape, generator=g1) < p, torch.full_like(labels, -1), labels)  # drop_labels
    assert torch.equal(drop_condition(labels, p, g2), old)
    vectors = torch.randn(64, 16)
    old = torch.where((torch.rand(64, generator=g1) < p)[:, None], torch.zeros_like(vectors), vectors)  # drop_rows
    assert torch.equal(drop_condition(vectors, p, g2, null=0.0), old)
    rows = torch.randint(0, 90, (64,))
    old = torch.where(torch.rand(64, generator=g1) < p, torch.full_like(rows, 99), rows)       # text2image's rows
    assert torch.equal(drop_condition(rows, p, g2, null=99), old)
    assert torch.equal(torch.rand(5, generator=g1), torch.rand(5, generator=g2))               # same stream after
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_condition(labels, 1.5, g1)
