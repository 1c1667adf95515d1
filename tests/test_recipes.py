"""The slim Profile and the recipes' presets: every model's config is what it was before the move, so the
shipped weights still match their profile, and a recipe's preset changes only through ``with_recipe``."""
import dataclasses
import json
from pathlib import Path

import pytest

from course_lib import paths, registry, store
from course_lib.config import PROFILES, Profile, recipe_preset
from course_lib.training import classifier, clip, denoiser, flow, latent, text2image, toy, unclip

BEFORE = json.loads((Path(__file__).parent / "data" / "core_before" / "recipes_before.json").read_text())
RECIPES = {"classifier": classifier, "clip": clip, "denoiser": denoiser, "flow": flow, "latent": latent,
           "text2image": text2image, "toy": toy, "unclip": unclip}


def test_profile_keeps_at_most_twenty_cross_cutting_fields():
    assert len(dataclasses.fields(Profile)) <= 20
    assert not hasattr(PROFILES["cpu"], "guidance") and not hasattr(PROFILES["cpu"], "clip_dim")


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_has_a_frozen_preset_per_profile(name):
    module = RECIPES[name]
    assert set(module.PRESETS) == set(PROFILES)
    for prof in PROFILES.values():
        preset = module.recipe_config(prof)
        assert dataclasses.is_dataclass(preset) and preset is module.PRESETS[prof.name]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(preset, dataclasses.fields(preset)[0].name, None)


@pytest.mark.parametrize("profile", ["test", "cpu", "gpu"])
def test_every_models_config_and_steps_are_those_recorded_before_the_move(profile):
    """tests/data/core_before/recipes_before.json was written by main's code (e47df83, its record.py)."""
    prof = PROFILES[profile]
    models = {k: v for k, v in BEFORE[profile].items() if not k.startswith("_")}
    assert set(models) == set(registry.MODELS) - {"speedrun"}        # the speedrun (issue 38) came after the move
    for name, want in models.items():
        got = {"config": registry.MODELS[name].config(prof), "steps": registry.MODELS[name].steps(prof)}
        assert json.loads(json.dumps(got)) == want, name


@pytest.mark.parametrize("profile", ["test", "cpu", "gpu"])
def test_sampling_defaults_are_the_old_profiles_values(profile):
    prof, old = PROFILES[profile], BEFORE[profile]["_sampling"]
    d = {name: registry.MODELS[name].sampling(prof)
         for name in ("denoiser", "class", "flow", "latent", "text2image", "text2image-lm", "unclip")}
    assert d["denoiser"]["guidance"] == old["self_guidance"]
    assert denoiser.recipe_config(prof).autoguidance == old["autoguidance"]
    assert d["flow"] == {"sampler": "euler", "steps": old["flow_steps"], "guidance": old["flow_guidance"]}
    for name in ("class", "latent", "text2image", "text2image-lm", "unclip"):
        assert d[name]["guidance"] == old["guidance"] and d[name]["steps"] == old["sample_steps"], name
        assert d[name]["sampler"] == "ddim"
    with pytest.raises(ValueError, match="does not generate"):
        registry.MODELS["classifier"].sampling(prof)


def test_the_shipped_weights_still_match_the_cpu_profile():
    cpu = PROFILES["cpu"]
    for name in registry.MODELS:
        tr = store.read_training(paths.weights_dir() / name)
        assert store.config_difference(tr["config"], registry.MODELS[name].config(cpu)) is None, name
        assert tr["steps"] == registry.MODELS[name].steps(cpu), name


def test_with_recipe_changes_one_recipe_and_reaches_the_model_config():
    prof = PROFILES["test"].with_recipe("denoiser", steps=3, clusters=7).with_recipe("denoiser", steps=4)
    r = denoiser.recipe_config(prof)
    assert (r.steps, r.clusters) == (4, 7) and denoiser.recipe_config(PROFILES["test"]).steps == 200
    assert denoiser.denoiser_config(prof)["num_classes"] == 7 and registry.MODELS["denoiser"].steps(prof) == 4
    assert clip.recipe_config(prof) is clip.PRESETS["test"]                  # other recipes untouched
    assert prof.to_dict()["recipe_changes"] == [["denoiser", "clusters", 7], ["denoiser", "steps", 4]]
    assert registry.MODELS["clip"].with_steps(PROFILES["test"], 9).recipe_changes == (("clip", "steps", 9),)


def test_a_wrong_field_or_a_profile_without_a_preset_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"'denoiser' recipe has no field 'train_steps'.*fields are channels"):
        denoiser.recipe_config(PROFILES["test"].with_recipe("denoiser", train_steps=3))
    with pytest.raises(ValueError, match=r"no preset for profile 'mine'.*test, cpu, gpu"):
        clip.recipe_config(PROFILES["cpu"].replace(name="mine"))
    with pytest.raises(ValueError, match="no preset"):
        recipe_preset({"cpu": None}, "x", PROFILES["test"])
