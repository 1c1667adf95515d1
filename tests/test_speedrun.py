"""The speedrun recipe (issue 38): its presets, its registry entry, a few steps under ``test`` and their resume,
the pipeline that samples it, the ``Every`` hook's clock, and one-line errors for bad recipes."""
import dataclasses
import json
import time

import pytest
import torch
from safetensors.torch import load_file

from course_lib import registry
from course_lib.config import PROFILES, get_runtime
from course_lib.pipelines.class_to_image import FlowToImage
from course_lib.registry import load_pipeline
from course_lib.training import speedrun

PROFILE = PROFILES["test"].replace(n_train=200)
RT = get_runtime("cpu")


def test_every_profile_has_a_frozen_checked_preset():
    assert set(speedrun.PRESETS) == set(PROFILES)
    for prof in PROFILES.values():
        r = speedrun.recipe_config(prof)
        assert r is speedrun.PRESETS[prof.name] and (r.space, r.objective) == ("pixel", "flow")
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.steps = 1
    assert speedrun.recipe_config(PROFILE.with_recipe("speedrun", steps=7)).steps == 7
    with pytest.raises(ValueError, match="has no field 'stepz'"):
        speedrun.recipe_config(PROFILE.with_recipe("speedrun", stepz=7))


@pytest.mark.parametrize("change, message", [
    (dict(space="voxels"), "space must be one of pixel, latent"),
    (dict(objective="x0"), "objective must be one of flow, eps"),
    (dict(time="beta"), "time must be one of uniform, logit-normal"),
    (dict(batch=0), "batch must be a whole number >= 1"),
    (dict(lr=0.0), "lr must be in"),
    (dict(min_snr_gamma=-1.0), "min_snr_gamma must be a positive number"),
    (dict(channels=(12, 64)), "channels must be two multiples of 8"),
])
def test_a_bad_recipe_is_refused_in_one_line_before_any_compute(change, message):
    with pytest.raises(ValueError, match=message) as e:
        speedrun.check_recipe(dataclasses.replace(speedrun.recipe_config(PROFILE), **change))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=message):                     # through the profile, as `train` reads it
        registry.MODELS["speedrun"].config(PROFILE.with_recipe("speedrun", **change))


def test_the_registered_model_must_be_a_pixel_flow_model_and_a_latent_run_needs_the_autoencoder(tmp_path):
    with pytest.raises(ValueError, match="pixel flow model"):
        speedrun.train_speedrun(PROFILE.with_recipe("speedrun", objective="eps"), tmp_path / "x", RT, progress=False)
    assert not (tmp_path / "x").exists()
    latent = dataclasses.replace(speedrun.recipe_config(PROFILE), space="latent")
    with pytest.raises(ValueError, match="needs the frozen autoencoder"):
        speedrun.build_run(latent, PROFILE, RT)


def test_the_registry_entry():
    spec = registry.MODELS["speedrun"]
    assert spec.pipeline.get() is FlowToImage and spec.takes == "labels" and "speedrun" in registry.SAMPLEABLE
    assert spec.steps(PROFILE) == speedrun.PRESETS["test"].steps
    assert spec.steps(spec.with_steps(PROFILE, 9)) == 9
    assert spec.sampling(PROFILE) == {"sampler": "euler", "steps": 5, "guidance": 1.5}
    cfg = spec.config(PROFILES["cpu"])
    assert cfg["objective"] == "flow" and cfg["recipe"] == "speedrun" and cfg["channels"] == [32, 64]


def _train(folder, **kw):
    return speedrun.train_speedrun(PROFILE, folder, RT, steps=6, progress=False, **kw)


def test_a_few_steps_resume_to_the_same_weights_and_load_as_a_flow_pipeline(tmp_path):
    whole = _train(tmp_path / "whole")
    _train(tmp_path / "parts", stop_after=3)
    assert json.loads((tmp_path / "parts" / "training.json").read_text())["step"] == 3
    resumed = _train(tmp_path / "parts")
    assert resumed.resumed_from == 3 and resumed.step == 6
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "parts" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.losses[3:] == resumed.losses[3:]                          # (the saved ones are rounded)

    pipe = load_pipeline(tmp_path / "whole")
    assert type(pipe) is FlowToImage
    assert pipe.sampling == registry.MODELS["speedrun"].sampling(PROFILE)     # the folder's defaults, written by training
    x = pipe(labels=[3, 7], seed=0)
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert torch.equal(pipe(labels=[3, 7], seed=0), x) and not torch.equal(pipe(labels=[3, 7], seed=1), x)
    with pytest.raises(ValueError, match="unknown sampler"):
        pipe(labels=[3], sampler="ddim")


def test_every_measures_on_the_training_clock_and_keeps_its_own_time_off_it(tmp_path):
    seen = []

    def slow(model, train_s, step):
        assert not model.training
        seen.append(train_s)
        time.sleep(0.3)
        return {"probe": step}
    hook = speedrun.Every(1e-3, slow)
    res = _train(tmp_path / "run", hooks=[hook])
    assert [r["step"] for r in hook.records] == list(range(1, 7)) and hook.records[-1]["probe"] == 6
    assert hook.paused >= 6 * 0.3
    assert hook.records[-1]["train_s"] < res.seconds - 5 * 0.3             # the sleeps are not training time
    with pytest.raises(ValueError, match="seconds must be > 0"):
        speedrun.Every(0, slow)


def test_flops_per_image_counts_the_convolutions_forward_and_backward():
    r = speedrun.recipe_config(PROFILES["cpu"])
    f = speedrun.flops_per_image(r, PROFILES["cpu"])
    conv = f["by_operator"]["convolution"]
    assert 0 < conv < f["total"] and f["by_operator"]["convolution_backward"] == pytest.approx(2 * conv, rel=0.05)
    wider = speedrun.flops_per_image(dataclasses.replace(r, channels=(64, 128)), PROFILES["cpu"])
    assert 3.0 < wider["total"] / f["total"] < 4.5                          # convs grow with width squared
