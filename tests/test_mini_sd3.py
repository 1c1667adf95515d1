"""Lesson 13: the miniature Stable Diffusion 3. The MMDiT keeps shapes, starts as the identity (adaLN-Zero)
and ignores padded text; the pipeline is deterministic, round-trips and refuses bad prompts, another encoder,
another model's folder and a missing autoencoder with one line each; the recipe resumes exactly; the registry
and the command line know ``mini-sd3``; the exercises' references pass and wrong answers fail."""
import json
import math
import shutil
import warnings

import pytest
import torch
from torch import nn

from course_lib import paths, registry
from course_lib.config import get_profile, get_runtime
from course_lib.exercises import lesson13
from course_lib.networks import mmdit, text_encoders
from course_lib.networks.autoencoder import load_autoencoder, weights_sha256
from course_lib.networks.unet import TextCond
from course_lib.pipelines.mini_sd3 import MiniSD3Pipeline, attention_maps, read_mini_sd3_config
from course_lib.training import mini_sd3 as recipe

PROFILE = get_profile("test")


def stub(*args):
    raise NotImplementedError


def text(B: int, L: int = 5, real: int = 3, seed: int = 0) -> TextCond:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(L)[None].expand(B, L) < real
    return TextCond(torch.randn(B, L, 384, generator=g), mask, torch.randn(B, 384, generator=g))


def randomised(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Every weight drawn at random (no zero-initialised layer left), so each part of the network matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


# --------------------------------------------------------------------------- the network
@pytest.mark.parametrize("patch", [1, 2, 7])
def test_mmdit_keeps_the_latent_shape_and_patchify_inverts(patch):
    cfg = mmdit.MMDiTConfig(patch=patch, width=32, depth=2, heads=2)
    model = randomised(mmdit.MMDiT(cfg))
    z = torch.randn(3, 4, 7, 7)
    v = model(z, torch.rand(3) * 1000, text(3))
    assert v.shape == z.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    tokens = mmdit.patchify(z, patch)
    assert tokens.shape == (3, cfg.grid ** 2, patch * patch * 4)
    assert torch.equal(mmdit.unpatchify(tokens, patch, 4, 7, 7), z)


def test_a_fresh_mmdit_is_the_identity_block_by_block_and_predicts_zero():
    model = mmdit.MMDiT(mmdit.MMDiTConfig(width=32, depth=3, heads=2))
    x, c, y = torch.randn(2, 49, 32), torch.randn(2, 5, 32), torch.randn(2, 32)
    for block in model.blocks[:-1]:
        x2, c2 = block(x, c, y)
        assert torch.equal(x2, x) and torch.equal(c2, c)                    # adaLN-Zero: gates are 0
    x2, c2 = model.blocks[-1](x, c, y)
    assert torch.equal(x2, x) and c2 is None                               # the last text stream is pre-only
    assert torch.equal(model(torch.randn(2, 4, 7, 7), torch.rand(2) * 1000, text(2)), torch.zeros(2, 4, 7, 7))
    randomised(model)
    assert not torch.equal(model.blocks[0](x, c, y)[0], x)                  # and not once trained


def test_padded_text_tokens_change_nothing_and_the_prompt_and_time_do():
    model = randomised(mmdit.MMDiT(mmdit.MMDiTConfig(width=32, depth=2, heads=2)))
    z, t, cond = torch.randn(2, 4, 7, 7), torch.full((2,), 500.0), text(2, L=6, real=4)
    other_padding = TextCond(torch.cat([cond.tokens[:, :4], torch.randn(2, 2, 384)], 1), cond.mask, cond.pooled)
    v = model(z, t, cond)
    assert torch.allclose(v, model(z, t, other_padding), atol=1e-6)
    assert not torch.allclose(v, model(z, t, text(2, L=6, real=4, seed=1)), atol=1e-3)
    assert not torch.allclose(v, model(z, t * 0.1, cond), atol=1e-3)


def test_joint_attention_is_one_attention_over_the_concatenated_sequence():
    g = torch.Generator().manual_seed(0)
    q_x, k_x, v_x = (torch.randn(2, 9, 16, generator=g) for _ in range(3))
    q_c, k_c, v_c = (torch.randn(2, 4, 16, generator=g) for _ in range(3))
    out_x, out_c = mmdit.joint_attention(q_x, k_x, v_x, q_c, k_c, v_c, heads=2)
    attn = nn.MultiheadAttention(16, 2, bias=False, batch_first=True)       # identity projections
    with torch.no_grad():
        attn.in_proj_weight.copy_(torch.cat([torch.eye(16)] * 3))
        attn.out_proj.weight.copy_(torch.eye(16))
    ref = attn(torch.cat([q_c, q_x], 1), torch.cat([k_c, k_x], 1), torch.cat([v_c, v_x], 1))[0]
    assert torch.allclose(out_c, ref[:, :4], atol=1e-5) and torch.allclose(out_x, ref[:, 4:], atol=1e-5)
    with pytest.raises(ValueError, match="cond must be a TextCond"):
        mmdit.MMDiT(mmdit.MMDiTConfig(width=32, depth=1, heads=2))(torch.randn(1, 4, 7, 7), torch.zeros(1), None)


# --------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def pipe():
    """An untrained pipeline of the test preset's sizes, every weight random (so the prompt changes the
    image), the real frozen encoder and the shipped autoencoder."""
    ae_folder = paths.weights_dir() / "autoencoder"
    cfg = {**recipe.mini_sd3_config(PROFILE), "autoencoder_sha256": weights_sha256(ae_folder),
           "sampling": {"sampler": "euler", "steps": 3, "guidance": 3.0}}
    model = randomised(mmdit.MMDiT(mmdit.MMDiTConfig.from_dict(cfg)), std=0.1)
    encoder, tokenizer = text_encoders.load_language_encoder("cpu", "package")
    return MiniSD3Pipeline(model, encoder, tokenizer, load_autoencoder(ae_folder), cfg)


def test_call_gives_images_in_range_deterministically_with_paired_noise(pipe):
    a = pipe(["a fat seven", "the numeral 2"], n_per_prompt=3, seed=4)
    assert a.shape == (6, 1, 28, 28) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, pipe(["a fat seven", "the numeral 2"], n_per_prompt=3, seed=4))
    assert not torch.equal(a, pipe(["a fat seven", "the numeral 2"], n_per_prompt=3, seed=5))
    one = pipe("the numeral 2", n_per_prompt=3, seed=4)                     # image i of each prompt from noise i
    assert torch.allclose(one, a[3:], atol=1e-5)
    assert not torch.allclose(a[:3], a[3:], atol=1e-3)                      # the prompt matters
    assert pipe.default_steps == 3 and pipe.sampler == "euler"


@pytest.mark.parametrize("bad, why", [("", "empty prompt"), ("  .,  ", "empty prompt"), ([], "no prompts"),
                                      (7, "must be a string"), (None, "must be a string")])
def test_bad_prompts_fail_clearly_before_any_compute(pipe, bad, why, monkeypatch):
    monkeypatch.setattr(pipe.mmdit, "forward", lambda *a, **k: pytest.fail("the network was called"))
    with pytest.raises(ValueError, match=why) as e:
        pipe(bad, n_per_prompt=2)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, why", [({"n_per_prompt": 0}, "n_per_prompt"), ({"sampler": "ddim"}, "flow model"),
                                         ({"guidance": float("nan")}, "finite")])
def test_bad_options_fail_clearly(pipe, kwargs, why):
    with pytest.raises(ValueError, match=why):
        pipe("a 3", **kwargs)


def test_a_too_long_prompt_is_truncated_with_a_warning(pipe):
    long = "a seven " + " ".join(["very"] * 40) + " fat"
    with pytest.warns(UserWarning, match=r"has 45 tokens; the text encoder reads at most 32: truncated"):
        images = pipe(long, steps=1)
    assert images.shape == (1, 1, 28, 28)


def test_labels_and_attention_maps(pipe):
    _, labels = pipe.generate_with_labels(["a fat seven", "a 3", "a digit"], 1, steps=1)
    assert labels.tolist() == [7, 3, -1]
    maps = attention_maps(pipe, "a fat seven", steps=2)
    assert maps["tokens"] == ["[CLS]", "a", "fat", "seven", "[SEP]"]
    assert maps["maps"].shape == (5, 7, 7) and maps["share"].shape == (5,)
    assert 0 < maps["text_share"] < 1 and math.isclose(float(maps["share"].sum()), maps["text_share"], rel_tol=1e-4)
    assert all(b.last_weights is None and not b.keep_weights for b in pipe.mmdit.blocks)


def test_save_load_round_trip_and_registry_loader(pipe, tmp_path):
    before = pipe(["a fat seven"], n_per_prompt=2, seed=1)
    folder = pipe.save_pretrained(tmp_path / "pipe")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["sampling"] == {"sampler": "euler", "steps": 3,
                                                                           "guidance": 3.0}
    loaded = registry.load_pipeline(folder)
    assert type(loaded) is MiniSD3Pipeline and torch.equal(loaded(["a fat seven"], n_per_prompt=2, seed=1), before)


def test_another_encoder_model_or_autoencoder_is_refused_in_one_line(pipe, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "pipe")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "text_encoder": {**cfg["text_encoder"], "sha256": "0" * 64}}))
    with pytest.raises(ValueError, match=r"trained with another text encoder.*retrain it with") as e:
        MiniSD3Pipeline.from_pretrained(folder)
    assert "\n" not in str(e.value)
    (folder / "config.json").write_text(json.dumps({**cfg, "model": "text2image-lm"}))
    with pytest.raises(ValueError, match="holds a 'text2image-lm' model, not a mini-sd3 one"):
        MiniSD3Pipeline.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "autoencoder_sha256": "ab" * 32}))
    with pytest.raises(FileNotFoundError, match="no autoencoder with weights sha256 ababab"):
        MiniSD3Pipeline.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="no mini-sd3 pipeline"):
        read_mini_sd3_config(tmp_path / "nothing")
    with pytest.raises(ValueError, match="not a mini-sd3 one"):
        read_mini_sd3_config(paths.weights_dir() / "text2image-lm")


def test_a_missing_or_altered_encoder_is_a_one_line_error(pipe, tmp_path, monkeypatch):
    folder = pipe.save_pretrained(tmp_path / "pipe")
    broken = tmp_path / "encoder"
    shutil.copytree(text_encoders.package_folder(), broken)
    (broken / "vocab.txt").write_text("altered")
    with pytest.raises(text_encoders.EncoderUnavailable, match="vocab.txt has been altered") as e:
        MiniSD3Pipeline.from_pretrained(folder, encoder_source=broken)
    assert "\n" not in str(e.value)
    (broken / "vocab.txt").unlink()
    with pytest.raises(text_encoders.EncoderUnavailable, match="lacks vocab.txt"):
        MiniSD3Pipeline.from_pretrained(folder, encoder_source=broken)


# --------------------------------------------------------------------------- the recipe, registry and CLI
def test_presets_live_beside_the_recipe_and_the_registry_reads_them():
    assert set(recipe.PRESETS) == {"test", "cpu", "gpu"}
    spec = registry.MODELS["mini-sd3"]
    assert spec.steps(PROFILE) == recipe.PRESETS["test"].steps and spec.config(PROFILE)["model"] == "mini-sd3"
    assert spec.sampling(PROFILE) == {"sampler": "euler", "steps": recipe.PRESETS["test"].sample_steps,
                                      "guidance": recipe.PRESETS["test"].guidance}
    assert spec.with_steps(PROFILE, 3).recipe_changes == (("mini_sd3", "steps", 3),)
    with pytest.raises(ValueError, match="has no preset for profile 'laptop'"):
        recipe.recipe_config(PROFILE.replace(name="laptop"))


def test_training_resumes_exactly_and_the_folder_is_a_pipeline(tmp_path):
    rt = get_runtime("cpu")
    small = recipe.MiniSD3Preset(**{**recipe.PRESETS["test"].__dict__, "steps": 6, "checkpoint_every": 100})
    whole = recipe.train_mini_sd3(PROFILE, tmp_path / "whole", rt, progress=False, preset=small)
    recipe.train_mini_sd3(PROFILE, tmp_path / "split", rt, progress=False, preset=small, stop_after=4)
    resumed = recipe.train_mini_sd3(PROFILE, tmp_path / "split", rt, progress=False, preset=small)
    assert resumed.resumed_from == 4 and resumed.step == whole.step == 6
    assert all(torch.equal(a, b) for a, b in zip(whole.ema_model.state_dict().values(),
                                                  resumed.ema_model.state_dict().values()))
    tr = json.loads((tmp_path / "whole" / "training.json").read_text())
    assert tr["kind"] == "mini-sd3" and tr["caption_tokens"] > 2 and tr["encode_seconds"] >= 0
    pipe = MiniSD3Pipeline.from_pretrained(tmp_path / "whole")
    assert pipe("a 3", n_per_prompt=2).shape == (2, 1, 28, 28)
    bigger = recipe.MiniSD3Preset(**{**small.__dict__, "width": 64})
    with pytest.raises(ValueError, match="another model config"):
        recipe.train_mini_sd3(PROFILE, tmp_path / "whole", rt, progress=False, preset=bigger)


def test_cli_trains_and_generates_mini_sd3(pipe, cli, tmp_path, monkeypatch):
    folder = pipe.save_pretrained(tmp_path / "pipe")
    png = tmp_path / "grid.png"
    code, out, err = cli("generate", "a fat seven", "-n", "2", "--steps", "2", "--checkpoint", folder, "-o", png)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG", err
    code, _, err = cli("generate", "a fat seven", "--checkpoint", folder, "--sampler", "ddim", "-o", png)
    assert code == 2 and "flow-matching model: use --sampler euler or heun" in err
    code, _, err = cli("generate", "a 3", "--model", "text2image-lm", "--checkpoint", folder, "-o", png)
    assert code == 2 and "disagree" in err
    code, _, err = cli("generate", " ", "--model", "mini-sd3", "-o", png)
    assert code == 2 and "empty prompt" in err
    home = tmp_path / "home"
    monkeypatch.setenv("COURSE_HOME", str(home))
    code, out, err = cli("train", "mini-sd3", "--steps", "3", "--no-progress")
    assert code == 0 and "mini-sd3: step 3" in out, err
    code, out, err = cli("generate", "the numeral 3", "--model", "mini-sd3", "-n", "1", "-o", png)
    assert code == 0 and str(home / "mini-sd3") in out, err


# --------------------------------------------------------------------------- the exercises
@pytest.mark.parametrize("check, solution", [(lesson13.check_joint_attention, lesson13.reference_joint_attention),
                                             (lesson13.check_adaln_zero, lesson13.reference_adaln_zero)])
def test_solutions_pass_and_stubs_are_not_attempted(check, solution, capsys):
    assert check(solution)
    assert "[ok]" in capsys.readouterr().out
    r = check(stub)
    assert not r and not r.attempted and "not attempted" in capsys.readouterr().out


def test_wrong_joint_attention_fails():
    def image_first(q_x, k_x, v_x, q_c, k_c, v_c, heads):          # concatenated the other way round
        out_c, out_x = mmdit.joint_attention(q_c, k_c, v_c, q_x, k_x, v_x, heads)
        return out_x, out_c

    def two_attentions(q_x, k_x, v_x, q_c, k_c, v_c, heads):       # each stream attends only to itself
        a = mmdit.joint_attention(q_x[:, :0], k_x[:, :0], v_x[:, :0], q_x, k_x, v_x, heads)[1]
        b = mmdit.joint_attention(q_c[:, :0], k_c[:, :0], v_c[:, :0], q_c, k_c, v_c, heads)[1]
        return a, b

    def swapped(q_x, k_x, v_x, q_c, k_c, v_c, heads):
        return mmdit.joint_attention(q_x, k_x, v_x, q_c, k_c, v_c, heads)[::-1]
    for wrong in (two_attentions, swapped):
        r = lesson13.check_joint_attention(wrong)
        assert r.attempted and not r
    assert lesson13.check_joint_attention(image_first)   # the order changes nothing but where the split falls


def test_wrong_adaln_zero_fails_and_the_zero_init_case_is_checked():
    def no_norm(x, branch, shift, scale, gate):
        return x + gate[:, None] * branch(x * (1 + scale[:, None]) + shift[:, None])

    def ungated(x, branch, shift, scale, gate):
        return mmdit.adaln_zero(x, branch, shift, scale, torch.ones_like(gate))
    for wrong in (no_norm, ungated):
        r = lesson13.check_adaln_zero(wrong)
        assert r.attempted and not r
