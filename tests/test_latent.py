"""Lesson 11: the KL autoencoder (28x28x1 <-> 7x7xC), its scaling factor, and class-conditional diffusion in
its latent space (training, resuming, the autoencoder check, sampling through the CLI)."""
import json
import math

import pytest
import torch

from course_lib.config import get_profile, get_runtime
from course_lib.networks.autoencoder import Autoencoder, AutoencoderConfig, kl_divergence, load_autoencoder
from course_lib.networks.unet import UNet, UNetConfig
from course_lib.pipelines import latent
from course_lib.store import CheckpointError
from course_lib.training import latent as latent_training
from course_lib.training.latent import recipe_config as latent_recipe

PROFILE = get_profile("test")


# --------------------------------------------------------------------------- the network
def test_encode_decode_shapes_and_the_latent_scaling():
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(latent_channels=3, channels=(8, 16, 16)))
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    post = ae.encode(x)
    assert post.mean.shape == post.logvar.shape == (5, 3, 7, 7) == (5, *ae.latent_shape)
    x_hat, _ = ae(x, torch.Generator().manual_seed(0))
    assert x_hat.shape == x.shape and ae.decode(post.mean).shape == x.shape
    g = torch.Generator().manual_seed(1)
    ae.scaling_factor = latent_training.measure_scaling_factor(ae, x, g)
    with torch.no_grad():
        z = ae.to_latent(x, torch.Generator().manual_seed(1))                     # the same draws
    assert abs(float(z.std()) - 1.0) < 1e-4                                         # unit variance
    assert torch.allclose(ae.from_latent(z), ae.decode(z / ae.scaling_factor).clamp(-1, 1))


def test_kl_term_is_zero_at_the_prior_and_matches_the_closed_form():
    zeros = torch.zeros(2, 4, 7, 7)
    assert torch.equal(kl_divergence(zeros, zeros), torch.zeros(2))                 # q = N(0, I)
    mean, logvar = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), math.log(0.25))
    q, p = torch.distributions.Normal(2.0, 0.5), torch.distributions.Normal(0.0, 1.0)
    assert torch.allclose(kl_divergence(mean, logvar), torch.distributions.kl_divergence(q, p).reshape(1))


def test_bad_shapes_and_ranges_are_clear_errors():
    ae = Autoencoder(AutoencoderConfig(latent_channels=2, channels=(8, 16, 16)))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        ae.encode(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ae.encode(torch.full((2, 1, 28, 28), 255.0))
    with pytest.raises(ValueError, match=r"\(B, 2, 7, 7\)"):
        ae.decode(torch.zeros(2, 4, 7, 7))
    with pytest.raises(ValueError, match="3 entries"):
        Autoencoder(AutoencoderConfig(channels=(8, 16)))
    lat = UNet(UNetConfig(channels=(16, 32), time_dim=32, in_channels=2, image_size=7, patch=1))
    with pytest.raises(ValueError, match=r"\(B, 2, 7, 7\)"):
        lat(torch.zeros(2, 1, 28, 28), torch.tensor([1, 2]))


def test_latent_unet_keeps_the_latent_shape_and_pixel_configs_unchanged():
    lat = UNet(UNetConfig(channels=(16, 32), time_dim=32, num_classes=10, in_channels=4, image_size=7, patch=1))
    z = torch.randn(3, 4, 7, 7)
    assert lat(z, torch.tensor([0, 500, 999]), torch.tensor([1, -1, 9])).shape == z.shape
    pixel = UNetConfig(channels=(32, 64), num_classes=10).to_dict()
    assert not {"in_channels", "image_size", "patch"} & set(pixel)          # shipped configs still match
    assert UNetConfig.from_dict(lat.config.to_dict()) == lat.config


# --------------------------------------------------------------------------- training (test profile)
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rt = get_runtime("cpu")
    root = tmp_path_factory.mktemp("latent")
    half = latent_training.train_autoencoder(PROFILE, out=root / "ae", runtime=rt, progress=False,
                                stop_after=latent_recipe(PROFILE).ae_steps // 2)
    assert half.step == latent_recipe(PROFILE).ae_steps // 2
    ae_res = latent_training.train_autoencoder(PROFILE, out=root / "ae", runtime=rt, progress=False)
    lat_res = latent_training.train_latent(PROFILE, out=root / "latent", runtime=rt, progress=False, autoencoder=root / "ae")
    return root, ae_res, lat_res


def test_autoencoder_resumes_and_saves_its_scaling_factor(trained):
    root, ae_res, _ = trained
    assert ae_res.resumed_from == latent_recipe(PROFILE).ae_steps // 2 and ae_res.step == latent_recipe(PROFILE).ae_steps
    ae = load_autoencoder(root / "ae")
    s = json.loads((root / "ae" / "config.json").read_text())["scaling_factor"]
    assert ae.scaling_factor == s and 0 < s < 100
    b = json.loads((root / "ae" / "config.json").read_text())["latent_bound"]
    assert ae.latent_bound == b and 1 < b < 10                              # ~3.5 for unit-variance latents
    x, _ = latent_training.load_mnist("train", n=latent_training.SCALE_IMAGES, profile=PROFILE, quiet=True)
    with torch.no_grad():
        z = ae.to_latent(x, torch.Generator().manual_seed(0))
    assert 0.95 < float(z.std()) < 1.05                                     # computed from the data
    rec = latent_training.reconstruct(ae, x[:200])
    assert (rec - x[:200]).abs().mean() < 0.5 * (x[:200] - x[:200].mean()).abs().mean()   # better than a blank


def test_latent_model_beats_chance_and_refuses_another_autoencoder(trained, tmp_path):
    root, _, lat_res = trained
    model = latent.load_latent(root / "latent", autoencoder=root / "ae")
    cfg = json.loads((root / "latent" / "config.json").read_text())
    assert cfg["autoencoder"] == latent_training.autoencoder_config(PROFILE) and len(cfg["autoencoder_sha256"]) == 64
    labels = torch.arange(200) % 10
    images, z0 = model.generate(labels=labels, guidance=3.0, steps=10, generator=torch.Generator().manual_seed(0),
                                return_latents=True)
    assert images.shape == (200, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    assert z0.abs().max() <= model.autoencoder.latent_bound + 1e-5         # x0 clipped to the latents' range
    from course_lib.networks.classifier import classify, label_accuracy
    from course_lib.registry import get_model
    clf = get_model("classifier", PROFILE, get_runtime("cpu"), progress=False)
    acc = label_accuracy(classify(clf, images)[0], labels)
    z = (acc - 0.1) / math.sqrt(0.1 * 0.9 / 200)
    assert z > 4, f"class accuracy {acc:.1%} is not above chance (10 %): z = {z:.1f}"
    # another autoencoder (same config, other weights): refused when loading, and when resuming training
    other = latent_training.train_autoencoder(PROFILE, out=tmp_path / "other", runtime=get_runtime("cpu"), progress=False,
                                 steps=2)
    assert other.step == 2
    with pytest.raises(CheckpointError, match="another autoencoder"):
        latent.load_latent(root / "latent", autoencoder=tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="no autoencoder with weights sha256"):
        latent.find_autoencoder(cfg["autoencoder_sha256"], folders=(tmp_path / "other",))
    with pytest.raises(ValueError, match="another autoencoder"):
        latent_training.train_latent(PROFILE, out=root / "latent", progress=False, autoencoder=tmp_path / "other")
    with pytest.raises(CheckpointError, match="not an autoencoder"):
        load_autoencoder(root / "latent")
    with pytest.raises(CheckpointError, match="not a latent"):
        latent.load_latent(root / "ae")


def test_cli_samples_decoded_digits_in_the_class_models_format(trained, tmp_path, monkeypatch):
    from course_lib.__main__ import main
    root, _, _ = trained
    monkeypatch.setenv("COURSE_HOME", str(root.parent))          # find_autoencoder looks in checkpoints/
    import shutil
    shutil.copytree(root / "ae", root.parent / "autoencoder", dirs_exist_ok=True)
    out = tmp_path / "x.pt"
    assert main(["sample", "--checkpoint", str(root / "latent"), "--labels", "all", "--n", "12", "--steps", "3",
                 "--out", str(out)]) == 0
    images, labels = torch.load(out, weights_only=True)
    assert images.shape == (12, 1, 28, 28) and labels.tolist() == [i % 10 for i in range(12)]
    with pytest.raises(SystemExit, match="ddim or ddpm"):
        main(["sample", "--checkpoint", str(root / "latent"), "--sampler", "euler", "--out", str(out)])
    with pytest.raises(SystemExit, match="--strip"):
        main(["sample", "--checkpoint", str(root / "latent"), "--strip", "s.png", "--out", str(out)])


def _zero_tail(path, n=100):
    data = bytearray(path.read_bytes())
    data[-n:] = bytes(n)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_shipped_autoencoder_names_its_file_and_git_checkout(tmp_path, monkeypatch, damage):
    """Review F5 (A06): a truncated shipped autoencoder made `sample` say "retrain the latent model" (224 s
    of training that then failed on the same file). Now: the file, and `git checkout`."""
    import shutil

    from course_lib import paths
    from course_lib.__main__ import main
    weights = tmp_path / "data" / "weights"
    for name in ("autoencoder", "latent"):
        shutil.copytree(paths.weights_dir() / name, weights / name)
    monkeypatch.setattr(paths, "weights_dir", lambda: weights)
    monkeypatch.setenv("COURSE_HOME", str(tmp_path / "no-checkpoints"))
    ae = weights / "autoencoder" / "model.safetensors"
    if damage == "truncated":
        ae.write_bytes(ae.read_bytes()[:5000])
    else:
        _zero_tail(ae)                                           # the header intact, the last weights zeroed
    with pytest.raises(CheckpointError) as e:
        latent.load_latent(weights / "latent")
    message = str(e.value)
    assert message.startswith(str(ae)) and "\n" not in message
    assert "git checkout -- data/weights/autoencoder" in message and "retrain" not in message
    with pytest.raises(SystemExit, match="git checkout -- data/weights/autoencoder") as e:   # the CLI's one line
        main(["sample", "--checkpoint", str(weights / "latent"), "--labels", "1", "--n", "2", "--steps", "2",
              "--out", str(tmp_path / "x.pt")])
    assert str(e.value).startswith(f"error: {ae}") and "retrain" not in str(e.value)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_user_autoencoder_is_named_not_taken_for_another_one(trained, tmp_path, damage):
    """Review F5 (A07, A08): a user's autoencoder with zeroed or cut weights; the remedy is to delete it or
    train it again, never to retrain the latent model on it."""
    import shutil
    root, _, _ = trained
    sha = json.loads((root / "latent" / "config.json").read_text())["autoencoder_sha256"]
    user = tmp_path / "autoencoder"
    shutil.copytree(root / "ae", user)
    assert latent.find_autoencoder(sha, folders=(user,)) == user
    path = user / "model.safetensors"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    else:
        _zero_tail(path)
    for call in (lambda: latent.find_autoencoder(sha, folders=(user,)),
                 lambda: latent.load_latent(root / "latent", autoencoder=user)):
        with pytest.raises(CheckpointError) as e:
            call()
        message = str(e.value)
        assert message.startswith(str(path)) and f"delete {user}" in message and "retrain" not in message


def test_registry_entries_match_the_profile():
    from course_lib.registry import MODELS
    assert latent_training.latent_config(PROFILE)["in_channels"] == latent_recipe(PROFILE).latent_channels
    assert MODELS["autoencoder"].steps(PROFILE) == latent_recipe(PROFILE).ae_steps
    assert MODELS["latent"].needs == ("autoencoder",)
