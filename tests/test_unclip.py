"""Lesson 10: unCLIP on digits. The embedding-conditional UNet keeps the other conditions and the shipped configs;
the prior's sampler reaches an oracle's vector; bad prompts, bad images and a folder missing its prior or decoder
are one-line errors before any compute; the pipeline round-trips; a tiny prior moves embeddings towards the
caption's digit far above chance; `generate` works on an unCLIP folder."""
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from course_lib import store
from course_lib.config import get_profile, get_runtime
from course_lib.diffusion.schedules import make_schedule
from course_lib.networks import prior as prior_net
from course_lib.networks.unet import UNet, UNetConfig
from course_lib.pipelines import unclip
from course_lib.training import unclip as unclip_training

PROFILE = get_profile("test")
TRAIN = PROFILE.replace(checkpoint_every=1_000).with_recipe("unclip", decoder_steps=40, prior_steps=400)


# --------------------------------------------------------------------------- the decoder's conditioning
def test_embedding_unet_keeps_shape_and_treats_a_zero_row_as_no_condition():
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(8, 16), time_dim=16, groups=4, embed_dim=6)).eval()
    torch.nn.init.normal_(net.out.weight, std=0.3)
    torch.nn.init.normal_(net.null_embed, std=1.0)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 10, 500])
    z = F.normalize(torch.randn(3, 6), dim=-1)
    with torch.no_grad():
        out = net(x, t, z)
        assert out.shape == x.shape
        assert torch.allclose(net(x, t, torch.zeros(3, 6)), net(x, t, None))          # zero row = the null vector
        assert not torch.allclose(net(x, t, z), net(x, t, None))                      # the embedding matters
        mixed = net(x, t, torch.cat([z[:1], torch.zeros(2, 6)]))
        assert torch.allclose(mixed[:1], out[:1], atol=1e-5) and torch.allclose(mixed[1:], net(x, t, None)[1:])
    with pytest.raises(ValueError, match=r"float tensor \(B, 6\)"):
        net(x, t, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        net(x, t, torch.randn(3, 5))


def test_embed_dim_is_left_out_of_configs_at_its_default():
    assert "embed_dim" not in UNetConfig().to_dict()                    # shipped configs stay as they were
    d = UNetConfig(embed_dim=64).to_dict()
    assert d["embed_dim"] == 64 and UNetConfig.from_dict(d).embed_dim == 64


# --------------------------------------------------------------------------- the prior
def test_prior_sampler_reaches_an_oracles_vector_and_is_deterministic():
    """An oracle prior that always predicts z* (x0-prediction) samples z* / |z*| from any start noise."""
    target = torch.tensor([3.0, -4.0, 0.0, 0.0])

    def oracle(z_t, t, cond=None):
        return target.expand_as(z_t)

    schedule = make_schedule("cosine", 1000)
    cond = F.normalize(torch.randn(5, 4), dim=-1)
    z = unclip.prior_sample(oracle, cond, schedule, steps=10, guidance=3.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, F.normalize(target, dim=0).expand(5, 4), atol=1e-5)
    prior = prior_net.DiffusionPrior(prior_net.PriorConfig(embed_dim=4, width=16, blocks=1)).eval()
    a = unclip.prior_sample(prior, cond, schedule, steps=5, generator=torch.Generator().manual_seed(1))
    b = unclip.prior_sample(prior, cond, schedule, steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=-1), torch.ones(5), atol=1e-5)


def test_prior_guidance_one_is_the_conditional_prediction_and_its_loss_trains():
    torch.manual_seed(0)
    prior = prior_net.DiffusionPrior(prior_net.PriorConfig(embed_dim=4, width=32, blocks=1))
    schedule = make_schedule("cosine", 100)
    z0 = 2.0 * F.normalize(torch.randn(64, 4), dim=-1)
    cond = F.normalize(z0 + 0.1 * torch.randn(64, 4), dim=-1)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(80):
        loss, parts = unclip_training.prior_loss(prior, z0, schedule, cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert parts["per_example"].shape == (64,) and parts["t"].shape == (64,)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


# --------------------------------------------------------------------------- bad input
def test_bad_images_are_named_before_any_compute():
    with pytest.raises(ValueError, match=r"shape \(28, 28\), \(1, 28, 28\) or \(B, 1, 28, 28\), got \(1, 32, 32\)"):
        unclip.check_images(torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match=r"in \[-1, 1\].*\[0, 255\].*x / 127.5 - 1"):
        unclip.check_images(torch.linspace(0, 255, 784).reshape(28, 28))
    with pytest.raises(ValueError, match="float tensor"):
        unclip.check_images(torch.zeros(28, 28, dtype=torch.uint8))
    assert unclip.check_images(torch.zeros(28, 28)).shape == (1, 1, 28, 28)


def test_training_refuses_a_folder_that_is_not_an_unclip_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(store.CheckpointError, match="not an unCLIP checkpoint.*notes.txt"):
        unclip_training.check_unclip_target(tmp_path)
    from course_lib import paths
    with pytest.raises(store.CheckpointError, match="shipped weights"):
        unclip_training.check_unclip_target(paths.weights_dir() / "unclip")


# --------------------------------------------------------------------------- a tiny trained pipeline
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("unclip") / "run"
    unclip_training.train_unclip(TRAIN, out=out, runtime=get_runtime("cpu"), progress=False)
    return out


def test_a_tiny_prior_moves_embeddings_towards_the_captions_digit(trained):
    """Prior samples for "zero".."9" are nearest (cosine) to the mean real image embedding of the named digit
    far more often than chance (1 in 10)."""
    from course_lib.data.mnist import load_mnist
    pipe = unclip.load_unclip(trained)
    x, y = load_mnist("test", n=1000, quiet=True)
    real = pipe.image_embeddings(x)
    means = F.normalize(torch.stack([real[y == d].mean(0) for d in range(10)]), dim=-1)     # (10, D)
    k = 10
    z = pipe.prior_embeddings([str(d) for d in range(10)], k, seed=0, guidance=2.0)          # (100, D)
    acc = float(((z @ means.T).argmax(-1) == torch.arange(10).repeat_interleave(k)).float().mean())
    z_score = (acc - 0.1) / math.sqrt(0.09 / len(z))
    print(f"prior digit accuracy {acc:.0%} (z = {z_score:.1f})")
    assert z_score > 6


def test_unknown_words_and_bad_variations_input_are_one_line_errors(trained):
    pipe = unclip.load_unclip(trained)
    with pytest.raises(ValueError, match="'sevn'"):
        pipe(["a thick sevn"], 2)
    with pytest.raises(ValueError, match="unknown source 'image'"):
        pipe(["7"], 1, source="image")
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        pipe.variations(torch.full((1, 28, 28), 3.0), 2)
    with pytest.raises(ValueError, match="integer >= 1"):
        pipe.variations(torch.zeros(1, 28, 28), 0)


def test_round_trip_gives_identical_images_and_variations_have_the_right_shape(trained, tmp_path):
    pipe = unclip.load_unclip(trained)
    a = pipe(["a thin two", "9"], 2, steps=3, seed=5)
    assert a.shape == (4, 1, 28, 28) and a.min() >= -1 and a.max() <= 1
    again = unclip.UnCLIP.from_pretrained(pipe.save_pretrained(tmp_path / "copy"))
    assert torch.equal(a, again(["a thin two", "9"], 2, steps=3, seed=5))
    assert not torch.equal(a, pipe(["a thin two", "9"], 2, steps=3, seed=6))
    text = pipe(["9"], 2, steps=3, seed=5, source="text")
    assert text.shape == (2, 1, 28, 28) and not torch.equal(text, a[2:])
    from course_lib.data.mnist import load_mnist
    x, _ = load_mnist("test", n=2, quiet=True)
    assert pipe.variations(x, 3, steps=3).shape == (6, 1, 28, 28)


def test_a_folder_missing_its_prior_or_decoder_is_named(trained, tmp_path):
    for part in ("prior", "decoder"):
        broken = tmp_path / part
        shutil.copytree(trained, broken, ignore=shutil.ignore_patterns("trainer"))
        shutil.rmtree(broken / part)
        with pytest.raises(FileNotFoundError, match=f"missing its {part}"):
            unclip.load_unclip(broken)


def test_generate_writes_images_and_labels_from_an_unclip_folder(trained, tmp_path, capsys):
    from course_lib.__main__ import main
    out = tmp_path / "x.pt"
    assert main(["generate", "a thick seven", "3", "--checkpoint", str(trained), "-n", "2", "--steps", "3",
                 "--out", str(out), "--profile", "test"]) == 0
    images, labels = torch.load(out)
    assert images.shape == (4, 1, 28, 28) and labels.tolist() == [7, 7, 3, 3]
    assert "unclip" not in capsys.readouterr().err
    with pytest.raises(SystemExit, match="'sevn'"):
        main(["generate", "a sevn", "--checkpoint", str(trained), "--out", str(tmp_path / "y.pt"), "--profile", "test"])
    assert not (tmp_path / "y.pt").exists()
