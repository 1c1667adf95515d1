"""No float64 tensor while a model trains or samples (issue 32): Apple silicon's ``mps`` device, which the
course picks on its own on a Mac, has no float64, so one float64 tensor made on the device stops a lesson.

A ``TorchDispatchMode`` sees every tensor torch makes. While it is on, these tests record each float64
result with the library line that made it. On this CPU, the CPU stands in for the device, so the rule is
stricter than ``mps`` needs: no torch float64 at all while a training step or a sampler runs. Bookkeeping
that wants double precision (the loss by t, a respaced schedule) is done on the host in numpy or Python
floats, which can never reach a device. The schedule's own precomputation (``make_schedule``, float64 on
the CPU, then stored as float32) runs before the mode is on, as the issue allows.
"""
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from course_lib.config import get_runtime
from course_lib.diffusion import flow, samplers
from course_lib.diffusion.forward import simple_loss
from course_lib.diffusion.guidance import guided
from course_lib.diffusion.schedules import make_schedule
from course_lib.networks.unet import UNet, UNetConfig
from course_lib.training.loop import LossByT, fit

CPU = get_runtime("cpu")


class Float64Found(TorchDispatchMode):
    """Records ``(op, library line)`` for every float64 tensor an operation returns while it is on."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_leaves(out)):
            where = [f"{f.filename.split('course_lib/')[-1]}:{f.lineno} {f.line}"
                     for f in traceback.extract_stack() if "course_lib" in f.filename]
            self.found.append((str(func), where[-1] if where else "(outside course_lib)"))
        return out


def no_float64(run):
    """Run ``run()`` under ``Float64Found`` and fail naming every float64 it made."""
    with Float64Found() as mode:
        run()
    assert not mode.found, "float64 tensors made while training or sampling (mps has none):\n" + "\n".join(
        sorted({f"  {op} at {where}" for op, where in mode.found}))


def tiny_unet(num_classes=0) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(channels=(8, 16), time_dim=16, groups=4, heads=2, num_classes=num_classes))


def test_the_check_can_fail():
    with Float64Found() as mode:
        torch.ones(2).double()
        torch.zeros(3, dtype=torch.float64)
    assert [op for op, _ in mode.found] == ["aten._to_copy.default", "aten.zeros.default"]


def _fit(model, loss_fn, T=None):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 28, 28, generator=g) * 2 - 1
    return fit(model, loss_fn, lambda gen: x, steps=3, lr=1e-3, warmup_steps=1, batch_size=8, ema_decay=0.9,
               config={"kind": "no-float64"}, runtime=CPU, hooks=[LossByT(T)] if T else [])


def test_a_diffusion_models_training_steps_make_no_float64():
    """``train.fit`` with the loss by t (``T`` given), as every DDPM-style model of the course trains."""
    schedule = make_schedule("cosine", 50)                      # float64 here is allowed: before the mode
    model = tiny_unet()
    loss = lambda m, x, g: simple_loss(m, x, schedule, generator=g, return_parts=True)
    res = {}
    no_float64(lambda: res.update(r=_fit(model, loss, T=schedule.T)))
    assert res["r"].loss_by_t and len(res["r"].loss_by_t["loss"]) == 10     # the loss by t was binned


def test_a_flow_models_training_steps_make_no_float64():
    """``flow_loss`` checks its times (``check_t``) on the device: in their own dtype."""
    model = tiny_unet()
    loss = lambda m, x, g: flow.flow_loss(m, x, generator=g, return_parts=True)
    no_float64(lambda: _fit(model, loss, T=1000))


@pytest.mark.parametrize("steps", [None, 7])
def test_the_ddpm_and_ddim_samplers_make_no_float64(steps):
    """DDPM with fewer steps than T respaces its schedule (``samplers.respace``), DDIM takes every step given;
    guided (classifier-free) too, through ``samplers.sample`` as the lessons call it."""
    schedule = make_schedule("linear", 20)
    model, class_model = tiny_unet().eval(), tiny_unet(num_classes=10).eval()
    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 7])

    def run():
        samplers.ddpm_sample(model, x_T, schedule, steps=steps, generator=torch.Generator().manual_seed(2))
        samplers.ddim_sample(model, x_T, schedule, steps=steps or 5)
        for sampler in ("ddpm", "ddim"):
            samplers.sample(guided(class_model, 2.0), 2, schedule, sampler=sampler, steps=steps, cond=labels,
                            generator=torch.Generator().manual_seed(3))
    no_float64(run)


def test_the_flow_samplers_make_no_float64():
    model = tiny_unet(num_classes=10).eval()
    x_1 = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    def run():
        for sample in (flow.euler_sample, flow.heun_sample):
            sample(model, x_1, steps=3)
            sample(model, x_1, times=torch.tensor([1.0, 0.5, 0.0]), cond=torch.tensor([1, 2]))
        flow.sample(model, 2, sampler="euler", steps=2, cond=torch.tensor([1, 2]),
                    generator=torch.Generator().manual_seed(3))
    no_float64(run)


@pytest.mark.parametrize("sync_every", [1, 2])
def test_the_loss_by_t_is_still_each_bins_mean(sync_every):
    """The bins now add up in float32 on the device between two reads (every step on a CPU; ``SYNC_EVERY``
    steps on a GPU, here 2) and in numpy's float64 on the host: each is still the mean of its examples."""
    schedule = make_schedule("cosine", 50)
    model, seen = tiny_unet(), []

    def loss(m, x, g):
        out = simple_loss(m, x, schedule, generator=g, return_parts=True)
        seen.append((out[1]["t"].clone(), out[1]["per_example"].detach().clone()))
        return out
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 28, 28, generator=g) * 2 - 1
    res = fit(model, loss, lambda gen: x, steps=5, lr=1e-3, warmup_steps=1, batch_size=8, ema_decay=0.9,
              config={"kind": "no-float64"}, runtime=CPU, hooks=[LossByT(schedule.T, bins=5)],
              sync_every=sync_every)
    t = torch.cat([s[0] for s in seen]).double()
    per = torch.cat([s[1] for s in seen]).double()
    b = (t * 5 // schedule.T).clamp(max=4)
    expected = [per[b == i].mean().item() if (b == i).any() else 0.0 for i in range(5)]
    assert res.loss_by_t["loss"] == pytest.approx(expected, rel=1e-5)
    assert res.loss_by_t["t_mid"] == [5.0, 15.0, 25.0, 35.0, 45.0]
