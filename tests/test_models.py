"""The diffusion training step and the model lookup that lessons rely on."""
import pytest
import torch

from course_lib import registry
from course_lib.diffusion.guidance import drop_condition
from course_lib.diffusion.schedules import make_schedule
from course_lib.networks import unet
from course_lib.training import denoiser
from course_lib.training.denoiser import recipe_config as denoiser_recipe


class Fixed(torch.nn.Module):
    def forward(self, x, t, cond=None):
        return 0.3 * x


def test_drop_condition_marks_dropped_labels_as_no_condition():
    labels = torch.arange(10).repeat(1000)
    dropped = drop_condition(labels, 0.3, torch.Generator().manual_seed(0))
    kept = dropped >= 0
    assert torch.equal(dropped[kept], labels[kept]) and 0.27 < (~kept).float().mean() < 0.33


def test_find_matching_uses_only_finished_checkpoints_of_the_profiles_config(test_profile, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_HOME", str(tmp_path))                  # keep this 3-step model to ourselves
    assert registry.find_matching("denoiser", test_profile.with_recipe("denoiser", channels=(8, 16))) is None
    denoiser.train_denoiser(test_profile.with_recipe("denoiser", steps=3), progress=False)
    assert registry.find_matching("denoiser", test_profile.with_recipe("denoiser", steps=3)) is not None
    assert registry.find_matching("denoiser", test_profile.with_recipe("denoiser", steps=3, time_dim=32)) is None


def test_get_model_without_training_says_where_it_looked(test_profile, tmp_path, monkeypatch):
    import pytest
    monkeypatch.setenv("COURSE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "denoiser")):
        registry.get_model("denoiser", test_profile.with_recipe("denoiser", channels=(8, 16)), train_if_missing=False)
    with pytest.raises(ValueError, match="unknown model"):
        registry.get_model("nonsense", test_profile)


def test_get_guide_loads_the_early_ema_weights_and_says_when_there_are_none(test_profile, tmp_path, monkeypatch):
    import pytest
    monkeypatch.setenv("COURSE_HOME", str(tmp_path))
    prof = test_profile.with_recipe("denoiser", steps=6, guide_step=2)
    with pytest.raises(FileNotFoundError, match="no finished denoiser"):
        registry.get_guide(prof)
    denoiser.train_denoiser(prof, progress=False)
    final = registry.get_model("denoiser", prof, train_if_missing=False, progress=False)
    guide = registry.get_guide(prof)
    assert not guide.training
    diffs = [not torch.equal(a, b) for a, b in zip(final.state_dict().values(), guide.state_dict().values())]
    assert any(diffs)
    short = test_profile.with_recipe("denoiser", steps=2, guide_step=2)             # too short to keep a guide
    denoiser.train_denoiser(short, out=tmp_path / "short", progress=False)
    with pytest.raises(FileNotFoundError, match="without guide_step"):
        unet.load_unet(tmp_path / "short", guide=True)


def test_denoiser_has_its_own_batch_size_and_lr_and_resumes_only_with_them(test_profile, tmp_path):
    import pytest

    from course_lib.store import read_training
    prof = test_profile.with_recipe("denoiser", steps=3, batch=8, lr=4e-3)
    assert denoiser_recipe(prof).batch != prof.batch_size
    denoiser.train_denoiser(prof, out=tmp_path / "d", progress=False, stop_after=1)
    training = read_training(tmp_path / "d")
    assert training["batch_size"] == 8 and training["config"]["batch_size"] == 8
    assert training["lr"] == denoiser_recipe(prof).lr != prof.lr
    with pytest.raises(ValueError, match="batch_size"):                 # the config names the differing field
        denoiser.train_denoiser(prof.with_recipe("denoiser", batch=16), out=tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="lr: 0.004 -> 0.001"):
        denoiser.train_denoiser(prof.with_recipe("denoiser", lr=1e-3), out=tmp_path / "d", progress=False)


def _get_model_in_a_process(profile, home, queue):
    import contextlib
    import io
    import os
    torch.set_num_threads(1)
    os.environ["COURSE_HOME"] = home
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        registry.get_model("denoiser", profile, progress=False)
    queue.put("training one" in printed.getvalue())


def test_two_processes_missing_the_same_model_train_it_once(test_profile, tmp_path):
    """Two notebooks (or parallel test workers) that both find a model missing: one trains it, the other
    waits for the training lock, then finds it finished and loads it."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    prof = test_profile.with_recipe("denoiser", steps=40, guide_step=10)
    procs = [ctx.Process(target=_get_model_in_a_process, args=(prof, str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    trained = sorted(queue.get(timeout=5) for _ in procs)
    assert trained == [False, True]


@pytest.mark.parametrize("name", sorted(registry.MODELS))
def test_every_shipped_model_matches_the_cpu_profile(name):
    """A change to a config (a new UNet field, a new profile setting) must not orphan the shipped weights:
    each is still what ``find_matching`` returns for the ``cpu`` profile the lessons use on a laptop."""
    from course_lib import paths
    from course_lib.config import get_profile
    assert registry.find_matching(name, get_profile("cpu")) == paths.weights_dir() / name
