"""The course CLIP (``clip``, its training in ``clip_training``): the loss by hand, a short training run,
checkpoints, and OpenAI's CLIP offline."""
import json
import math
import time

import pytest
import torch

from course_lib.config import get_profile
from course_lib.data.mnist import load_mnist
from course_lib.exercises import lesson07
from course_lib.networks import clip as CL
from course_lib.training import clip as CT
from course_lib.training.clip import recipe_config as clip_recipe

PROFILE = get_profile("test")


def test_clip_loss_by_hand_3x3():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 1.0]])
    lse = lambda xs: math.log(sum(math.exp(v) for v in xs))
    rows = [lse(logits[i].tolist()) - logits[i, i].item() for i in range(3)]          # image -> captions
    cols = [lse(logits[:, j].tolist()) - logits[j, j].item() for j in range(3)]       # caption -> images
    expected = (sum(rows) / 3 + sum(cols) / 3) / 2
    assert abs(CT.clip_loss(logits).item() - expected) < 1e-6
    assert torch.allclose(CT.clip_loss(logits, torch.eye(3, dtype=torch.bool)), CT.clip_loss(logits))


def test_multi_positive_targets():
    # captions 0 and 1 are identical ("the number seven"), so images 0 and 1 match both of them
    logits = torch.tensor([[2.0, 3.0, 0.0], [3.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    same = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    lse = lambda xs: math.log(sum(math.exp(v) for v in xs))
    half = lambda xs: lse(xs) - 0.5 * (xs[0] + xs[1])             # -(log p0 + log p1) / 2
    rows = [half([2.0, 3.0, 0.0]), half([3.0, 2.0, 0.0]), lse([0.0, 0.0, 2.0]) - 2.0]
    expected = sum(rows) / 3                                      # the matrix is symmetric: columns = rows
    assert abs(CT.clip_loss(logits, same).item() - expected) < 1e-6
    assert CT.clip_loss(logits, same) < CT.clip_loss(logits)      # identity targets punish the twin caption
    with pytest.raises(ValueError):
        CT.clip_loss(torch.zeros(3, 4))
    with pytest.raises(ValueError):
        CT.clip_loss(logits, torch.zeros(3, 3))


def test_model_config_from_profile():
    cfg = CT.clip_config_from_profile(PROFILE)
    json.dumps(cfg)
    model = CL.build_clip(cfg)
    tc, vc = model.config.text_config, model.config.vision_config
    assert tc.eos_token_id == 1 and tc.bos_token_id == 2 and tc.pad_token_id == 0
    assert vc.image_size == 28 and vc.num_channels == 1 and vc.patch_size == clip_recipe(PROFILE).patch
    assert model.config.projection_dim == clip_recipe(PROFILE).embed and tc.hidden_size == clip_recipe(PROFILE).dim
    with pytest.raises(ValueError, match="patch must divide 28, got 5"):
        CT.clip_config_from_profile(PROFILE.with_recipe("clip", patch=5))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "clip"
    result = CT.train_clip(PROFILE, out=out, progress=False)
    return result, out


def test_short_training_beats_chance(trained):
    result, out = trained
    x, y = load_mnist("test", n=500, quiet=True)
    model, tok = result.ema_model, CL.load_tokenizer()
    acc = (CL.zero_shot_classify(model, tok, x) == y).float().mean().item()
    assert acc > 0.3, f"zero-shot accuracy {acc:.2f} (chance 0.10)"
    assert sum(result.losses[-20:]) / 20 < 0.8 * sum(result.losses[:20]) / 20
    near = CL.nearest_captions(model, tok, x[:2], k=3)
    assert len(near) == 2 and len(near[0]) == 3 and near[0][0][1] >= near[0][1][1]


def test_checkpoint_loads_with_transformers_and_resumes(trained):
    from transformers import CLIPModel, PreTrainedTokenizerFast
    result, out = trained
    model = CLIPModel.from_pretrained(str(out)).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    x, _ = load_mnist("test", n=16, quiet=True)
    prompts = ["a thick seven leaning right", "the number 3"]
    assert torch.allclose(CL.embed_images(model, x), CL.embed_images(result.ema_model, x), atol=1e-5)
    assert torch.allclose(CL.embed_text(model, tok, prompts), CL.embed_text(result.ema_model, tok, prompts),
                          atol=1e-5)
    loaded, _ = CL.load_clip(out)
    assert not loaded.training
    again = CT.train_clip(PROFILE, out=out, progress=False)             # same config, already finished
    assert again.resumed_from == clip_recipe(PROFILE).steps and again.step == clip_recipe(PROFILE).steps
    with pytest.raises(ValueError, match="another model config"):
        CT.train_clip(PROFILE.with_recipe("clip", dim=48), out=out, progress=False)


def test_get_clip_loads_a_matching_checkpoint(trained, tmp_path, monkeypatch):
    import shutil
    _, out = trained
    monkeypatch.setenv("COURSE_HOME", str(tmp_path))
    shutil.copytree(out, tmp_path / "clip")
    model, tok, training = CT.get_clip(PROFILE, progress=False)
    assert training["step"] == clip_recipe(PROFILE).steps and not model.training and len(training["losses"]) > 0


def test_project_2d_is_pca():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 5, generator=g) * torch.tensor([5.0, 2.0, 0.1, 0.1, 0.1])
    za, zb = CL.project_2d(a[:12], a[12:])
    assert za.shape == (12, 2) and zb.shape == (8, 2)
    z = torch.cat([za, zb])
    assert z[:, 0].var() > z[:, 1].var() and torch.allclose(z.mean(0), torch.zeros(2), atol=1e-5)


def _tiny_pretrained(folder):
    """A tiny randomly initialised CLIP with a tiny BPE tokenizer, saved like a Hub model (as transformers'
    own tests build them)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    vocab = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>", "t</w>",
             "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
    tok = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=21, eos_token_id=22,
                         pad_token_id=22),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    out = folder / "tiny-clip"
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(str(out))
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(str(out))
    return out


def test_tiny_pretrained_style_model_loads_through_from_pretrained(tmp_path):
    folder = _tiny_pretrained(tmp_path)
    model, processor = CL.load_pretrained_clip(str(folder))
    x, _ = load_mnist("test", n=4, quiet=True)
    img = CL.pretrained_embed_images(model, processor, x)               # 28x28x1 -> 3 channels, resized
    txt = CL.pretrained_embed_text(model, processor, ["lower", "newer wider"])
    assert img.shape == (4, 8) and txt.shape == (2, 8)
    assert torch.allclose(img.norm(dim=1), torch.ones(4), atol=1e-5)


@pytest.fixture
def silent_hub(monkeypatch):
    """A local "Hub" that accepts connections and never answers (a captive portal, a broken proxy)."""
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    yield server
    server.close()
    for c in held:
        c.close()


def test_pretrained_loader_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(CL.PretrainedCLIPUnavailable, match="no network"):
        CL.load_pretrained_clip("openai/clip-vit-base-patch32")
    assert time.perf_counter() - t < 3.0


def test_pretrained_loader_gives_up_on_a_hub_that_accepts_and_never_answers(silent_hub, monkeypatch):
    monkeypatch.setattr(CL.hub, "in_hub_cache", lambda name: False)
    t = time.perf_counter()
    with pytest.raises(CL.PretrainedCLIPUnavailable, match="did not answer within 1 s"):
        CL.load_pretrained_clip("openai/clip-vit-base-patch32", timeout_s=1.0)
    assert time.perf_counter() - t < 3.0


def test_any_failure_after_the_probe_is_the_courses_unavailable_error(monkeypatch):
    """The Hub answered the probe, then the download failed (26.5 s and a raw OSError before)."""
    import transformers
    monkeypatch.setattr(CL.hub, "hub_answers", lambda name, timeout_s: (True, "HTTP 200"))

    def fails(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", fails)
    with pytest.raises(CL.PretrainedCLIPUnavailable, match="OSError: We couldn't connect"):
        CL.load_pretrained_clip("openai/clip-vit-base-patch32")


def test_lesson07_check_rejects_wrong_answers():
    assert lesson07.check_clip_loss(lesson07.reference_clip_loss)
    one_way = lambda logits: torch.nn.functional.cross_entropy(logits, torch.arange(len(logits)))
    r = lesson07.check_clip_loss(one_way)
    assert r.attempted and not r.passed and "hint" in r.message
    summed = lambda logits: 2 * lesson07.reference_clip_loss(logits)
    assert not lesson07.check_clip_loss(summed)


def test_openai_clip_is_downloaded_only_when_asked_or_under_gpu(monkeypatch):
    """Issue 32 (metered networks): lesson 07 used to download about 600 MB by default under `cpu` when
    online. Now only when asked (TRY_OPENAI_CLIP = True), under `gpu`, or on Colab; never asking the Hub."""
    import sys

    from course_lib.config import get_profile
    monkeypatch.setattr(CL.hub, "hub_answers", lambda *a, **k: pytest.fail("the choice asked the Hub"))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert CL.pretrained_clip_wanted(get_profile("cpu")) is False
    assert CL.pretrained_clip_wanted(get_profile("test")) is False
    assert CL.pretrained_clip_wanted(get_profile("gpu")) is True
    assert CL.pretrained_clip_wanted(get_profile("cpu"), True) is True
    assert CL.pretrained_clip_wanted(get_profile("gpu"), False) is False
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert CL.pretrained_clip_wanted(get_profile("cpu")) is True
