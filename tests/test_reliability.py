"""Bad input, as a hostile but realistic user gives it: each case gets one clear line before any compute, and
nothing the user made is lost. The table of these cases and their errors is in tests/README.md."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from course_lib import paths, store
from course_lib.data import mnist
from course_lib.diffusion import samplers
from course_lib.diffusion.guidance import autoguided, guided
from course_lib.diffusion.schedules import make_schedule
from course_lib.networks import unet
from course_lib.store import CheckpointError
from course_lib.training import checkpoints, denoiser

WEIGHTS = paths.weights_dir()



@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if sampling or training starts: the error must come before any compute."""
    def boom(*a, **k):
        raise AssertionError("compute started before the bad input was refused")
    monkeypatch.setattr(samplers, "sample", boom)
    monkeypatch.setattr(denoiser, "fit", boom)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


# --------------------------------------------------------------------------- 1. nothing the user made is deleted
def test_training_refuses_a_folder_that_is_not_its_checkpoint_and_keeps_it(tmp_path, cli, no_compute):
    mine = tmp_path / "mine"
    (mine / "photos").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    before = _tree(mine)
    code, _, err = cli("train", "class", "--steps", "3", "--out", mine, "--no-progress")
    assert code != 0 and "not empty" in err and "notes.txt" in err and "photos/" in err
    assert _tree(mine) == before
    copy = tmp_path / "t2i-copy"                                       # a copy of a shipped model folder
    shutil.copytree(WEIGHTS / "text2image", copy)
    before = _tree(copy)
    code, _, err = cli("train", "class", "--steps", "3", "--out", copy, "--no-progress")
    assert code != 0 and "not a training checkpoint" in err and _tree(copy) == before
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = cli("train", "class", "--steps", "3", "--out", a_file, "--no-progress")
    assert code != 0 and "is a file" in err and a_file.read_text() == "x"


def test_training_never_writes_into_the_shipped_weights(cli, no_compute):
    before = _tree(WEIGHTS / "denoiser")
    for out in (WEIGHTS / "denoiser", WEIGHTS, WEIGHTS / "new-model"):
        code, _, err = cli("train", "denoiser", "--steps", "3", "--out", out, "--no-progress")
        assert code != 0 and "shipped weights" in err
    assert _tree(WEIGHTS / "denoiser") == before and not (WEIGHTS / "new-model").exists()


def test_training_refuses_an_unwritable_home_before_any_compute(tmp_path, cli, monkeypatch, no_compute):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("COURSE_HOME", str(blocker / "home"))           # its parent is a file
    code, _, err = cli("train", "class", "--steps", "3", "--no-progress")
    assert code != 0 and "cannot write checkpoints" in err and "COURSE_HOME" in err


def test_training_into_an_empty_folder_then_resuming_works(tmp_path, test_profile):
    out = tmp_path / "empty"
    out.mkdir()
    denoiser.train_class_model(test_profile, out=out, steps=2, progress=False)
    assert store.has_checkpoint(out)
    with pytest.raises(ValueError, match="checkpoint of the class model, not of denoiser"):
        denoiser.train_denoiser(test_profile.with_recipe("denoiser", steps=2), out=out, progress=False)


# --------------------------------------------------------------------------- 5. interrupted checkpoint writes
def _checkpoint(tmp_path, test_profile, steps):
    out = tmp_path / "run"
    denoiser.train_class_model(test_profile, out=out, steps=steps, progress=False)
    return out


def test_a_crash_between_the_two_renames_resumes_from_the_newest_checkpoint(tmp_path, test_profile):
    out = _checkpoint(tmp_path, test_profile, 4)
    old = tmp_path / ".run.old-0000abcd"
    os.replace(out, old)                                     # the previous checkpoint, step 4
    newer = tmp_path / ".run.tmp-0000beef"
    shutil.copytree(old, newer)                              # the new one, complete (training.json is last)
    tr = json.loads((newer / "training.json").read_text())
    tr["step"] = 5
    (newer / "training.json").write_text(json.dumps(tr))
    done = checkpoints.recover_interrupted_write(out)
    assert store.read_training(out)["step"] == 5 and any("step 5" in line for line in done)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_write_killed_half_way_leaves_nothing_behind(tmp_path, test_profile):
    out = _checkpoint(tmp_path, test_profile, 3)
    partial = tmp_path / ".run.tmp-00001234"
    (partial / "trainer").mkdir(parents=True)                # killed before training.json was written
    (partial / "trainer" / "raw_model.safetensors").write_bytes(b"\0" * 10)
    denoiser.train_class_model(test_profile, out=out, steps=3, progress=False)   # the next start cleans up
    assert not partial.exists() and store.read_training(out)["step"] == 3


# --------------------------------------------------------------------------- 3. impossible settings
@pytest.mark.parametrize("args, message", [
    (("--guidance", "nan"), "--guidance: must be a finite number"),
    (("--guidance", "inf"), "--guidance: must be a finite number"),
    (("--eta", "nan"), "--eta: must be a finite number"),
    (("--eta", "-1"), "--eta: must be >= 0"),
    (("--n", "0"), "--n: must be >= 1"),
    (("--steps", "0"), "--steps: must be >= 1"),
    (("--autoguidance", "nan"), "--autoguidance: must be a finite number"),
])
def test_sample_refuses_non_finite_or_impossible_settings(args, message, cli, no_compute, tmp_path):
    code, _, err = cli("sample", "--checkpoint", WEIGHTS / "class", "--labels", "all", "--out",
                       tmp_path / "x.pt", *args)
    assert code == 2 and message in err and not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("steps", ["0", "-5", "two"])
def test_train_refuses_zero_or_negative_steps(steps, cli, no_compute):
    code, _, err = cli("train", "class", "--steps", steps)
    assert code == 2 and "--steps" in err


@pytest.mark.parametrize("args, message", [(("-n", "-1"), "-n: must be >= 1"),
                                           (("--guidance", "nan"), "--guidance: must be a finite number")])
def test_generate_refuses_bad_counts_and_scales(args, message, cli, tmp_path):
    code, _, err = cli("generate", "a 3", "-o", tmp_path / "g.png", *args)
    assert code == 2 and message in err


def test_a_bad_out_is_refused_before_sampling(cli, no_compute, tmp_path):
    (tmp_path / "d.png").mkdir()
    for out, message in ((tmp_path / "x.jpg", "must end in .png"), (tmp_path / "d.png", "is a folder"),
                         (tmp_path / "f" / "x.png", "cannot create")):
        if out.name == "x.png":
            (tmp_path / "f").write_text("")                  # a file where the folder should be
        code, _, err = cli("sample", "--checkpoint", WEIGHTS / "class", "--out", out)
        assert code != 0 and message in err, err


@pytest.mark.parametrize("device, message", [("bogus", "is not a device"), ("mps", "not available"),
                                             ("cuda", "CUDA is not available")])
def test_an_unusable_course_device_is_one_line(device, message, cli, monkeypatch):
    if device == "mps" and torch.backends.mps.is_available() or device == "cuda" and torch.cuda.is_available():
        pytest.skip(f"{device} exists here")
    monkeypatch.setenv("COURSE_DEVICE", device)
    code, _, err = cli("info")
    assert code == 2 and message in err and "Traceback" not in err


def test_the_python_api_refuses_unknown_labels_another_T_and_non_finite_scales():
    model, cfg = unet.load_unet(WEIGHTS / "class")
    schedule = make_schedule(cfg["schedule"], cfg["T"])
    for bad in (10, 11, -2):
        with pytest.raises(ValueError, match=f"label {bad} is out of range"):
            samplers.sample(guided(model, 2.0), 2, schedule, steps=2, cond=torch.tensor([3, bad]))
    with pytest.raises(ValueError, match="trained on a chain of T=1000"):
        samplers.sample(model, 2, make_schedule(cfg["schedule"], 100), steps=2, cond=torch.tensor([1, 2]))
    for w in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            guided(model, w)
        with pytest.raises(ValueError, match="finite"):
            autoguided(model, model, w)
    with pytest.raises(ValueError, match="eta"):
        samplers.sample(model, 2, schedule, steps=2, eta=float("nan"), cond=torch.tensor([1, 2]))
    x = samplers.sample(guided(model, 2.0), 2, schedule, steps=2, cond=torch.tensor([3, -1]))   # -1: no label
    assert x.shape == (2, 1, 28, 28)


def test_metrics_refuse_images_in_pixel_units():
    from course_lib.networks.classifier import classify, load_classifier
    clf = load_classifier(WEIGHTS / "classifier")
    x, _ = mnist.load_mnist("test", n=8, quiet=True)
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\]"):
        classify(clf, (x + 1) * 127.5)
    with pytest.raises(ValueError, match="shape"):
        classify(clf, x[:, 0])
    assert classify(clf, x)[0].shape == (8, 10)


# --------------------------------------------------------------------------- 4. corrupted or mismatched files
def _copy(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(WEIGHTS / name, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_a_damaged_weights_file_is_named_with_what_to_do(damage, tmp_path, cli):
    folder = _copy("class", tmp_path)
    f = folder / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes({"truncated": raw[: len(raw) // 2], "random": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupted or not a safetensors file"):
        unet.load_unet(folder)
    code, _, err = cli("sample", "--checkpoint", folder, "--labels", "all", "--out", tmp_path / "x.pt")
    assert code == 2 and str(f) in err and "delete" in err and len(err.strip().splitlines()) == 1


def test_another_models_config_and_invalid_json_are_named(tmp_path):
    folder = _copy("class", tmp_path)
    shutil.copy(WEIGHTS / "clip" / "config.json", folder / "config.json")
    with pytest.raises(CheckpointError, match="is not a course UNet's config"):
        unet.load_unet(folder)
    cfg = json.loads((WEIGHTS / "class" / "config.json").read_text())
    cfg["channels"] = [16, 32]                                          # weights of another size
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit the model"):
        unet.load_unet(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        unet.load_unet(folder)
    from course_lib.networks.classifier import load_classifier
    with pytest.raises(CheckpointError, match="not the course classifier"):
        load_classifier(_copy("denoiser", tmp_path))


def test_a_shipped_file_says_how_to_restore_it(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "weights_dir", lambda: tmp_path)
    folder = tmp_path / "class"
    shutil.copytree(WEIGHTS / "class", folder)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="git checkout -- data/weights"):
        unet.load_unet(folder)


def test_a_corrupted_training_state_on_resume_is_named(tmp_path, test_profile):
    out = _checkpoint(tmp_path, test_profile, 2)
    (out / "trainer" / "optimizer.safetensors").write_bytes(os.urandom(100))
    with pytest.raises(CheckpointError, match="optimizer.safetensors is corrupted"):
        denoiser.train_class_model(test_profile, out=out, steps=2, progress=False)
    (out / "training.json").write_text("{")
    with pytest.raises(CheckpointError, match="training.json is not valid JSON"):
        denoiser.train_class_model(test_profile, out=out, steps=2, progress=False)


def test_a_truncated_mnist_file_is_named_on_load(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    shutil.copytree(paths.mnist_dir(), raw, ignore=shutil.ignore_patterns("*-ubyte"))
    monkeypatch.setattr(paths, "mnist_dir", lambda: raw)
    monkeypatch.setattr(paths, "root", lambda: tmp_path)
    f = raw / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz is truncated or corrupted"):
        mnist.load_mnist("test", n=10, source="numpy", quiet=True)


def test_a_recompressed_mnist_file_with_the_same_bytes_is_accepted(tmp_path):
    """torchvision's download compresses the same bytes differently: they are checked decompressed."""
    import gzip
    raw = tmp_path / "raw"
    shutil.copytree(paths.mnist_dir(), raw, ignore=shutil.ignore_patterns("*-ubyte"))
    f = raw / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes()), compresslevel=1, mtime=1))
    mnist.verify_checksums(raw)


# --------------------------------------------------------------------------- also
def test_generate_says_which_model_and_skips_an_unfinished_checkpoint(tmp_path, cli, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("COURSE_HOME", str(home))
    mine = home / "text2image"
    shutil.copytree(WEIGHTS / "text2image", mine)
    tr = json.loads((mine / "training.json").read_text())
    tr["step"] = tr["steps"] // 2                                        # an interrupted run
    (mine / "training.json").write_text(json.dumps(tr))
    code, out, err = cli("generate", "a 3", "-n", "1", "--steps", "2", "-o", tmp_path / "g.pt")
    assert code == 0, err
    assert "has not finished training" in out and f"model: {WEIGHTS / 'text2image'}" in out
    assert f"{tr['steps']} of {tr['steps']} steps" in out


def test_damaged_text_to_image_and_clip_folders_are_named(tmp_path):
    from course_lib.networks.clip import load_clip
    from course_lib.pipelines.text_to_image import TextToImage
    t2i = _copy("text2image", tmp_path)
    (t2i / "text_encoder.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="text_encoder.safetensors is corrupted"):
        TextToImage.from_pretrained(t2i)
    shutil.copy(WEIGHTS / "text2image" / "text_encoder.safetensors", t2i / "text_encoder.safetensors")
    (t2i / "tokenizer.json").write_text("{")
    with pytest.raises(CheckpointError, match="cannot read the tokenizer"):
        TextToImage.from_pretrained(t2i)
    other = _copy("class", tmp_path)
    shutil.copy(WEIGHTS / "text2image" / "text_encoder.safetensors", other / "text_encoder.safetensors")
    with pytest.raises(CheckpointError, match="not a text-to-image model's config"):
        TextToImage.from_pretrained(other)
    clip = _copy("clip", tmp_path)
    (clip / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model.safetensors is corrupted"):
        load_clip(clip)
    shutil.copy(WEIGHTS / "class" / "config.json", clip / "config.json")
    with pytest.raises(CheckpointError, match="not a CLIP config"):
        load_clip(clip)
