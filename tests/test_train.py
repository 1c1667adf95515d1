"""The training loop and checkpoints: overfitting, exact resume, the NaN guard, atomic writes."""
import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from course_lib import store
from course_lib.config import get_runtime
from course_lib.training import checkpoints
from course_lib.training.loop import (
    GuideSnapshot,
    LossByT,
    ProgressBar,
    _restore_generator,
    ema_avg_fn,
    ema_multi_avg_fn,
    fit,
    warmup_cosine_lr,
)

CPU = get_runtime("cpu")


def tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(16, 1))
    X = torch.randn(64, 4)
    Y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def get_batch(g):
        idx = torch.randint(0, 64, (16,), generator=g)
        return X[idx], Y[idx]

    def loss_fn(m, batch, g):
        x, y = batch
        return (m(x + 0.01 * torch.randn(x.shape, generator=g)) - y).pow(2).mean()
    return model, loss_fn, get_batch


def run(out=None, steps=60, stop_after=None, config=None, guide_step=None, **kw):
    model, loss_fn, get_batch = tiny_problem()
    return fit(model, loss_fn, get_batch, steps=steps, lr=1e-2, warmup_steps=5, batch_size=16, ema_decay=0.9,
               config=config or {"kind": "tiny", "width": 16}, out=out, checkpoint_every=20, runtime=CPU,
               stop_after=stop_after, hooks=[GuideSnapshot(guide_step)] if guide_step else [], **kw)


def test_loss_falls_well_below_its_start():
    res = run(steps=300)
    assert sum(res.losses[-20:]) / 20 < 0.1 * sum(res.losses[:5]) / 5


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    full = run(tmp_path / "a", steps=60)
    part = run(tmp_path / "b", steps=60, stop_after=25)            # "interrupted" after 25 steps
    assert part.step == 25
    resumed = run(tmp_path / "b", steps=60)
    assert resumed.resumed_from == 25 and resumed.step == 60
    for (k, v), (_, w) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k
    for (k, v), (_, w) in zip(full.ema_model.state_dict().items(), resumed.ema_model.state_dict().items()):
        assert torch.equal(v, w), k
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)   # history is saved rounded


def test_other_config_is_refused_naming_the_field(tmp_path):
    run(tmp_path / "c", steps=10)
    with pytest.raises(ValueError, match=r"width: 16 -> 32"):
        run(tmp_path / "c", steps=10, config={"kind": "tiny", "width": 32})


def train_with_a_nan(out, nan_call, **kw):
    """Train the tiny problem for 50 steps (checkpoints every 20) with a NaN loss at call ``nan_call``."""
    model, _, get_batch = tiny_problem()
    calls = {"n": 0}

    def loss_fn(m, batch, g):
        calls["n"] += 1
        x, y = batch
        loss = (m(x) - y).pow(2).mean()
        return loss * float("nan") if calls["n"] == nan_call else loss
    fit(model, loss_fn, get_batch, steps=50, lr=1e-2, warmup_steps=1, batch_size=16, ema_decay=0.9,
        config={"k": 1}, out=out, checkpoint_every=20, runtime=CPU, **kw)


def test_nan_loss_stops_with_step_and_last_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError) as e:
        train_with_a_nan(tmp_path / "n", 30)
    assert "step 29" in str(e.value) and str(tmp_path / "n") in str(e.value)
    assert store.read_training(tmp_path / "n")["step"] == 20


@pytest.mark.parametrize("nan_call", [30, 19])
def test_nan_found_late_still_names_its_step_and_never_reaches_a_checkpoint(tmp_path, nan_call):
    """With the losses read only every 7 steps (what a GPU does, every 25), a NaN is still reported at its
    own step, and a NaN just before a checkpoint (call 19, checkpoint after step 20) is caught before it."""
    with pytest.raises(FloatingPointError) as e:
        train_with_a_nan(tmp_path / "n", nan_call, sync_every=7)
    assert f"step {nan_call - 1}" in str(e.value)
    if nan_call < 20:
        assert not store.has_checkpoint(tmp_path / "n")
        assert "none (no checkpoint was written yet)" in str(e.value)
    else:
        assert store.read_training(tmp_path / "n")["step"] == 20
        saved = load_file(str(tmp_path / "n" / "model.safetensors"))
        assert all(torch.isfinite(v).all() for v in saved.values())


def test_losses_read_in_blocks_equal_losses_read_every_step():
    assert run(steps=40, sync_every=9).losses == run(steps=40).losses


def test_a_generator_state_from_another_device_reseeds_with_a_warning():
    g = torch.Generator().manual_seed(0)
    cuda_like_state = torch.zeros(16, dtype=torch.uint8)          # a CUDA generator's state is 16 bytes
    with pytest.warns(UserWarning, match="another device"):
        _restore_generator(g, cuda_like_state, seed=0, start=25)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(25)))


def test_ema_for_lists_equals_ema_per_tensor():
    avg, multi = ema_avg_fn(0.999), ema_multi_avg_fn(0.999)
    current = [torch.randn(3, 4), torch.randn(5)]
    for n in (0, 7, 10**6):
        averaged = [torch.randn(3, 4), torch.randn(5)]
        want = [avg(a.clone(), c, torch.tensor(n)) for a, c in zip(averaged, current)]
        multi(averaged, current, torch.tensor(n))
        for w, a in zip(want, averaged):
            assert torch.allclose(w, a, atol=1e-6)
    ids = [torch.arange(10)]
    multi(ids, [torch.arange(10) * 3], torch.tensor(5))            # integer buffers are copied
    assert torch.equal(ids[0], torch.arange(10) * 3)


def test_interrupted_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    out = tmp_path / "d"
    run(out, steps=20)
    before = load_file(str(out / "model.safetensors"))

    def boom(*a, **k):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(checkpoints, "save_file", boom)
    with pytest.raises(OSError):
        checkpoints.save_checkpoint(out, model=torch.nn.Linear(1, 1),
                                    ema=torch.optim.swa_utils.AveragedModel(torch.nn.Linear(1, 1)),
                                    optimizer=torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), 0.1),
                                    rng={}, training={"config": {}})
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "training.json").read_text())["step"] == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp folder left behind


def test_checkpoint_folder_is_safetensors_only(tmp_path):
    run(tmp_path / "e", steps=20)
    files = {p.relative_to(tmp_path / "e").as_posix() for p in (tmp_path / "e").rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "training.json", "trainer/raw_model.safetensors",
            "trainer/ema.safetensors", "trainer/optimizer.safetensors", "trainer/rng.safetensors"} <= files
    assert not any(f.endswith((".pt", ".pth", ".pkl", ".bin")) for f in files)


def test_missing_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        store.read_training(tmp_path / "nothing")


def test_ema_warmup_and_lr_schedule():
    avg = ema_avg_fn(0.999)
    # first update: d = 1/10, so the average moves 90 % of the way to the new weights
    assert torch.allclose(avg(torch.zeros(1), torch.ones(1), torch.tensor(0)), torch.tensor([0.9]))
    assert torch.allclose(avg(torch.zeros(1), torch.ones(1), torch.tensor(10**6)), torch.tensor([0.001]))
    lrs = [warmup_cosine_lr(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] > 0.09


def test_ema_copies_integer_buffers_instead_of_averaging_them():
    avg = ema_avg_fn(0.999)
    ids = torch.arange(10)
    assert torch.equal(avg(ids.clone(), ids, torch.tensor(5)), ids)


def test_guide_step_keeps_the_ema_weights_of_that_step_across_a_resume(tmp_path):
    """The guide is exactly the EMA a run has after guide_step steps, and a resume carries it along."""
    at15 = run(tmp_path / "g15", steps=60, stop_after=15)                  # the EMA after 15 steps
    run(tmp_path / "full", steps=60, guide_step=15)
    run(tmp_path / "split", steps=60, guide_step=15, stop_after=10)        # stopped before the guide step
    run(tmp_path / "split", steps=60, guide_step=15, stop_after=20)        # passes it
    run(tmp_path / "split", steps=60, guide_step=15)                       # and finishes
    want = {k: v for k, v in at15.ema_model.state_dict().items()}
    for folder in ("full", "split"):
        guide = load_file(str(tmp_path / folder / store.GUIDE_FILE))
        assert guide.keys() == want.keys()
        for k in want:
            assert torch.equal(guide[k], want[k]), (folder, k)
        final = load_file(str(tmp_path / folder / "model.safetensors"))
        assert not all(torch.equal(final[k], guide[k]) for k in guide)    # the final EMA moved on
        assert store.read_training(tmp_path / folder)["guide_step"] == 15
    assert not (tmp_path / "g15" / store.GUIDE_FILE).exists()      # none unless asked for


def test_guide_step_outside_the_run_and_a_changed_step_count_are_refused(tmp_path):
    with pytest.raises(ValueError, match="guide_step"):
        run(steps=20, guide_step=20)
    run(tmp_path / "s", steps=20)
    with pytest.raises(ValueError, match="20-step run"):
        run(tmp_path / "s", steps=40)


# ------------------------------------------------------------------------------- fit with hooks, against main's
BEFORE = Path(__file__).parent / "data" / "core_before"       # written by main's fit (e47df83): record.py


def hooked_run(out, stop_after=None):
    """record.py's run, through the hooks: a tiny model, loss by t (T = 10), a guide at step 4."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))

    def get_batch(g):
        return torch.randn(8, 2, generator=g)

    def loss_fn(m, x, g):
        t = torch.randint(0, 10, (8,), generator=g)
        noise = torch.randn(x.shape, generator=g)
        per = (m(x + noise * (t[:, None] + 1) / 10) - noise).pow(2).mean(1)
        return per.mean(), {"t": t, "per_example": per}
    return fit(model, loss_fn, get_batch, steps=8, lr=1e-2, warmup_steps=2, batch_size=8, ema_decay=0.9,
               config={"kind": "tiny-hooks", "width": 8}, meta={"kind": "tiny-hooks"}, out=out,
               checkpoint_every=3, runtime=CPU, stop_after=stop_after,
               hooks=[ProgressBar(enabled=False), LossByT(10), GuideSnapshot(4)])


def _assert_equals_main(res):
    want = json.loads((BEFORE / "fit_before.json").read_text())["full"]
    for part, module in (("model", res.model), ("ema", res.ema_model)):
        got = module.state_dict()
        assert got.keys() == want[part].keys()
        for k, v in want[part].items():
            assert torch.equal(got[k].flatten(), torch.tensor(v, dtype=got[k].dtype)), (part, k)   # bit-identical
    assert res.step == want["step"] and res.loss_by_t == want["loss_by_t"]
    return want


def test_fit_with_hooks_gives_mains_weights_bit_for_bit(tmp_path):
    """The same seed gives the weights, losses and loss by t that fit gave before it took hooks."""
    res = hooked_run(tmp_path / "new")
    want = _assert_equals_main(res)
    assert res.losses == want["losses"]
    assert len(inspect.signature(fit).parameters) <= 20                 # was 26


def test_a_checkpoint_written_before_the_hooks_resumes_to_the_same_run(tmp_path):
    """main's fit stopped at step 5 of 8 (trainer/ and training.json in the old format); the new fit resumes
    it and ends where main's uninterrupted run ended, with the same guide and the same training.json keys."""
    old = tmp_path / "old"
    shutil.copytree(BEFORE / "fit_before_ckpt", old)
    saved_keys = set(store.read_training(old))
    res = hooked_run(old)
    assert res.resumed_from == 5
    _assert_equals_main(res)
    assert set(store.read_training(old)) == saved_keys
    fresh = tmp_path / "fresh"
    hooked_run(fresh)
    guide_old, guide_new = load_file(str(old / store.GUIDE_FILE)), load_file(str(fresh / store.GUIDE_FILE))
    assert all(torch.equal(guide_old[k], guide_new[k]) for k in guide_new)
