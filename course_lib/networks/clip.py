"""CLIP on captioned digits: a shared space where a caption and the digits it describes lie close together.

Radford et al. (2021), "Learning Transferable Visual Models From Natural Language Supervision", Fig. 1 and
Fig. 3 (the pseudocode): an image encoder and a text encoder map a batch of B images and their B captions
to unit vectors; the B x B matrix of cosine similarities, times a learned temperature exp(t), is read as
logits, and a symmetric cross-entropy pulls each image towards its caption and away from the others.

This module is the network and what is done with it; it knows no data and no training loop:

    build_clip    the model, sized by its config (``training.clip.clip_config_from_profile`` reads the profile)
    embed_images, embed_text, similarity    unit vectors and their cosine similarities
    zero_shot_classify, nearest_captions,   reading digits and captions off the similarities
    attribute_accuracy
    load_clip, save_clip                    a CLIP folder (transformers' files and the tokenizer)
    load_pretrained_clip, ...               OpenAI's CLIP, for comparison

The model is transformers' own ``CLIPModel`` (a ViT over 28 x 28 x 1 patches and a causal text transformer
over ``course_lib.text``'s closed vocabulary). A folder loads with ``CLIPModel.from_pretrained`` and
``PreTrainedTokenizerFast.from_pretrained``. Its training (the caption dataset, the contrastive loss, the
course's one loop) is in ``course_lib.training.clip``, with ``get_clip`` (find or train the course CLIP).

OpenAI's pretrained ``openai/clip-vit-base-patch32`` loads with ``load_pretrained_clip`` where the Hub
answers (or from a cached copy); where it does not, it fails within about ``timeout_s`` (1.5 s) with
``PretrainedCLIPUnavailable`` (``course_lib.hub``: a real HTTP request with a deadline); a load that then
stalls (nothing arriving for ``hub.STALL_S`` seconds) and every failure of the download itself become that
same error. Lesson 07 loads it only when asked (``pretrained_clip_wanted``: about 600 MB the first time).
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import hub, paths, store
from ..config import Profile
from ..text import vocabulary
from ..text.tokenizer import END, PAD, START, encode, load_tokenizer

__all__ = ["build_clip", "embed_text", "embed_images", "similarity", "project_2d",
           "zero_shot_logits", "zero_shot_classify", "nearest_captions", "attribute_accuracy", "load_clip",
           "save_clip", "DIGIT_TEMPLATE", "PRETRAINED", "PretrainedCLIPUnavailable", "hub_reachable",
           "load_pretrained_clip", "pretrained_clip_wanted", "pretrained_embed_images", "pretrained_embed_text"]

DIGIT_TEMPLATE = "a photo of the digit {}"      # the zero-shot prompt, as in Radford et al. (2021), Sec. 3.1.4
LOGIT_SCALE_INIT = math.log(1 / 0.07)           # Radford et al. (2021), Sec. 2.5: temperature 0.07 at start


# ---------------------------------------------------------------------------------------------- the model


def build_clip(config: dict):
    """A randomly initialised transformers ``CLIPModel`` for ``config`` (from ``clip_config_from_profile``)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    vocab = config["vocabulary"]
    text = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=config["dim"], intermediate_size=4 * config["dim"],
        num_hidden_layers=config["layers"], num_attention_heads=config["heads"],
        max_position_embeddings=config["max_length"], projection_dim=config["embed"],
        pad_token_id=vocab.index(PAD), bos_token_id=vocab.index(START), eos_token_id=vocab.index(END))
    vision = CLIPVisionConfig(
        hidden_size=config["dim"], intermediate_size=4 * config["dim"], num_hidden_layers=config["layers"],
        num_attention_heads=config["heads"], image_size=config["image_size"], patch_size=config["patch"],
        num_channels=config["num_channels"], projection_dim=config["embed"])
    cfg = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=config["embed"],
                     logit_scale_init_value=LOGIT_SCALE_INIT)
    if cfg.text_config.eos_token_id == 2:        # transformers would pool at the largest id (legacy CLIP)
        raise ValueError("the end token must not have id 2 (see course_lib.text)")
    return CLIPModel(cfg)


# ---------------------------------------------------------------------------------------------- embeddings
def _pooled(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output   # transformers 4.x vs 5.x


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_text(model, tokenizer, prompts: str | list[str], batch_size: int = 1024) -> torch.Tensor:
    """Unit-length text embeddings ``(N, embed)`` (on the CPU) for ``prompts`` (validated first)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    dev, out = _device(model), []
    for i in range(0, len(prompts), batch_size):
        ids, mask = encode(prompts[i:i + batch_size], tokenizer=tokenizer)
        out.append(_pooled(model.get_text_features(input_ids=ids.to(dev), attention_mask=mask.to(dev))).float())
    return F.normalize(torch.cat(out), dim=-1).cpu()


@torch.no_grad()
def embed_images(model, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Unit-length image embeddings ``(N, embed)`` (on the CPU) for ``images`` ``(N, 1, 28, 28)`` in [-1, 1]."""
    if images.dim() != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected images of shape (N, 1, 28, 28), got {tuple(images.shape)}")
    dev, out = _device(model), []
    for i in range(0, len(images), batch_size):
        out.append(_pooled(model.get_image_features(pixel_values=images[i:i + batch_size].to(dev))).float())
    return F.normalize(torch.cat(out), dim=-1).cpu()


def similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(N, M)`` of unit image embeddings ``(N, E)`` with unit text embeddings ``(M, E)``."""
    if image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(f"embedding sizes differ: {image_embeds.shape[-1]} vs {text_embeds.shape[-1]}")
    return image_embeds.float() @ text_embeds.float().T


def project_2d(*embeddings: torch.Tensor) -> list[torch.Tensor]:
    """Project several sets of embeddings ``(N_i, E)`` onto the two principal axes of all of them together.

    PCA by the SVD of the centred, stacked rows (deterministic; each axis's sign fixed so its largest
    component is positive). Returns one ``(N_i, 2)`` tensor per input.
    """
    X = torch.cat([e.float().cpu() for e in embeddings])
    Xc = X - X.mean(0, keepdim=True)
    _, _, Vh = torch.linalg.svd(Xc, full_matrices=False)            # rows of Vh: principal directions
    V = Vh[:2].T                                                     # (E, 2)
    V = V * torch.sign(V.gather(0, V.abs().argmax(0, keepdim=True)))
    Z = Xc @ V
    return list(Z.split([len(e) for e in embeddings]))


def zero_shot_logits(model, tokenizer, images: torch.Tensor, template: str = DIGIT_TEMPLATE,
                     words=vocabulary.DIGIT_WORDS) -> torch.Tensor:
    """Similarity ``(N, 10)`` of each image with the prompts ``template.format(word)`` for the ten digits."""
    return similarity(embed_images(model, images), embed_text(model, tokenizer, [template.format(w) for w in words]))


def zero_shot_classify(model, tokenizer, images: torch.Tensor, template: str = DIGIT_TEMPLATE,
                       words=vocabulary.DIGIT_WORDS) -> torch.Tensor:
    """Zero-shot digit labels ``(N,)``: the digit whose prompt is most similar (Radford et al. 2021, Sec. 3.1.2)."""
    return zero_shot_logits(model, tokenizer, images, template, words).argmax(1)


def nearest_captions(model, tokenizer, images: torch.Tensor, k: int = 5, candidates: list[str] | None = None
                     ) -> list[list[tuple[str, float]]]:
    """Retrieval: for each image, the ``k`` most similar captions (default: every caption of the vocabulary's
    caption set, ``captions.all_captions``) with their cosine similarities."""
    candidates = candidates if candidates is not None else vocabulary.all_captions()[0]
    sim = similarity(embed_images(model, images), embed_text(model, tokenizer, candidates))
    top = sim.topk(min(k, len(candidates)), dim=1)
    return [[(candidates[j], round(float(s), 4)) for s, j in zip(vals, idx)]
            for vals, idx in zip(top.values.tolist(), top.indices.tolist())]


def attribute_accuracy(model, tokenizer, images: torch.Tensor, labels: torch.Tensor, bins: torch.Tensor,
                       attribute: str) -> tuple[float, int]:
    """Zero-shot accuracy on one attribute: for each image with a word for it, is "a thick seven" (its high
    word) or "a thin seven" (its low word) more similar? Only images in the low or high bin count.

    Returns:
        (accuracy, number of images scored).
    """
    k = vocabulary.ATTRIBUTE_NAMES.index(attribute)
    a = vocabulary.ATTRIBUTES[k]
    keep = bins[:, k] != 0
    if not keep.any():
        return float("nan"), 0
    prompts = []
    for w in vocabulary.DIGIT_WORDS:
        for word in (a.low[0], a.high[0]):
            prompts.append(f"a {word} {w}" if a.phrase == "adjective" else f"a {w} {a.verbs[0]} {word}")
    prompts = [p.replace("a eight", "an eight") for p in prompts]
    text = embed_text(model, tokenizer, prompts).view(10, 2, -1)              # (digit, low/high, E)
    img = embed_images(model, images[keep])
    lab = labels[keep].cpu()
    sims = (img[:, None, :] * text[lab]).sum(-1)                              # (n, 2)
    pred = sims.argmax(1) * 2 - 1                                             # -1 low, +1 high
    return float((pred == bins[keep, k].cpu()).float().mean()), int(keep.sum())


# ---------------------------------------------------------------------------------------------- saving and loading
@contextlib.contextmanager
def _quiet_transformers():
    """No transformers progress bars ("Loading weights", "Writing model shards") for our tiny models."""
    from transformers.utils import logging as hf_logging
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_clip(model, folder: str | Path) -> None:
    """What a CLIP folder holds: transformers' config + weights, and the tokenizer beside them (``load_clip``
    reads it back; training passes this to ``fit`` as its ``export``)."""
    with _quiet_transformers():
        model.save_pretrained(str(folder))
    load_tokenizer().save_pretrained(str(folder))


def load_clip(path: str | Path | None = None, device: torch.device | str = "cpu"):
    """Load a trained course CLIP: an explicit folder, else the user's checkpoint, else the shipped weights.

    Returns:
        (``CLIPModel`` in eval mode on ``device``, its tokenizer).
    """
    from transformers import CLIPModel
    folder = paths.find_model("clip", path)
    cfg = store.read_json(folder / "config.json")
    if not isinstance(cfg, dict) or cfg.get("model_type") != "clip":
        raise store.CheckpointError(f"{folder / 'config.json'} is not a CLIP config: {folder} holds another "
                                          f"kind of model")
    store.read_tensors(folder / "model.safetensors")           # a damaged file: one line naming it
    try:
        with _quiet_transformers():
            model = CLIPModel.from_pretrained(str(folder)).to(device).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise store.CheckpointError(f"cannot load the CLIP in {folder} ({type(e).__name__}: "
                                          f"{str(e).splitlines()[0][:160] if str(e) else ''}); "
                                          f"{store.fix_for(folder)}") from None
    tokenizer = load_tokenizer(folder) if (folder / "tokenizer.json").is_file() else load_tokenizer()
    return model, tokenizer


# ---------------------------------------------------------------------------------------------- OpenAI's CLIP
PRETRAINED = "openai/clip-vit-base-patch32"


class PretrainedCLIPUnavailable(RuntimeError):
    """OpenAI's CLIP cannot be loaded here (no answer from the Hub and no cached copy, or the download failed)."""


def hub_reachable(timeout_s: float = 1.5, name: str = PRETRAINED) -> bool:
    """Does the Hugging Face Hub answer an HTTP request for ``name`` within ``timeout_s``? (``hub.hub_answers``;
    False at once when ``HF_HUB_OFFLINE`` is set.)"""
    return hub.hub_answers(name, timeout_s)[0]


def pretrained_clip_wanted(profile: Profile, asked: bool | None = None) -> bool:
    """Should lesson 07 load OpenAI's CLIP (a download of about 600 MB the first time)?

    ``asked`` (the lesson's ``TRY_OPENAI_CLIP``) decides when it is True or False. Left as None: only under
    the ``gpu`` profile or on Colab, where the network is fast and not metered; never by default on a
    laptop (``cpu``) or in tests."""
    if asked is not None:
        return bool(asked)
    import sys
    return profile.name == "gpu" or "google.colab" in sys.modules


PRETRAINED_DEADLINE_S = 1_800    # a whole first download of OpenAI's CLIP (600 MB at 0.35 MB/s or faster)


def load_pretrained_clip(name: str = PRETRAINED, device: torch.device | str = "cpu", timeout_s: float = 1.5,
                         deadline_s: float = PRETRAINED_DEADLINE_S, stall_s: float | None = None):
    """``CLIPModel.from_pretrained(name)`` and its processor, failing fast when they cannot be had.

    ``name`` is a Hub id (default OpenAI's ViT-B/32, 151M parameters, about 600 MB) or a local folder.
    Where the Hub does not answer an HTTP request within ``timeout_s`` (offline, a captive portal or a
    broken proxy that accepts connections and never answers), only a copy in the local Hugging Face cache is
    used. While it loads from the Hub, the load is given up when nothing new arrives for ``stall_s``
    seconds (default ``hub.STALL_S``, 30 s) or after ``deadline_s`` in all (``hub.with_deadline``: a Hub that answers once and then holds
    its connections), and any failure (a refused download, a Hub error, a half-written cache) becomes
    ``PretrainedCLIPUnavailable``.

    Returns:
        (``CLIPModel`` in eval mode on ``device``, its ``CLIPProcessor``).

    Raises:
        PretrainedCLIPUnavailable: the model cannot be had here, saying why.
    """
    kwargs = {}
    local = Path(name).expanduser().is_dir()
    if not local:
        answered, why = hub.hub_answers(name, timeout_s)
        if not answered:
            if not hub.in_hub_cache(name):
                raise PretrainedCLIPUnavailable(
                    f"cannot load {name!r}: no network ({why}) and no copy in the local Hugging Face cache. "
                    f"With internet it downloads once (about 600 MB); the course's own CLIP needs none of this.")
            kwargs = {"local_files_only": True}
    from transformers import AutoProcessor, CLIPModel

    def load():
        return CLIPModel.from_pretrained(name, **kwargs), AutoProcessor.from_pretrained(name, **kwargs)

    try:
        model, processor = load() if (local or kwargs) else hub.with_deadline(load, name, deadline_s, stall_s)
    except Exception as e:                    # OSError, an HTTP or timeout error, a corrupted cache entry
        raise PretrainedCLIPUnavailable(f"cannot load {name!r}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                                        f" (the course's own CLIP needs none of this)") from None
    return model.to(device).eval(), processor


def _to_rgb_uint8(images: torch.Tensor) -> list:
    """(N, 1, H, W) in [-1, 1] -> N arrays (H, W, 3) uint8: what an image processor expects."""
    import numpy as np
    pix = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [np.repeat(p[0].numpy()[..., None], 3, axis=2) for p in pix]


@torch.no_grad()
def pretrained_embed_images(model, processor, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Unit embeddings of MNIST digits under a pretrained CLIP: made 3-channel and resized by its processor
    (to 224 x 224 for OpenAI's)."""
    dev, out = _device(model), []
    for i in range(0, len(images), batch_size):
        inputs = processor(images=_to_rgb_uint8(images[i:i + batch_size]), return_tensors="pt")
        out.append(_pooled(model.get_image_features(pixel_values=inputs["pixel_values"].to(dev))).float())
    return F.normalize(torch.cat(out), dim=-1).cpu()


@torch.no_grad()
def pretrained_embed_text(model, processor, prompts: list[str]) -> torch.Tensor:
    """Unit text embeddings under a pretrained CLIP (its own tokenizer, any English words)."""
    inputs = processor(text=list(prompts), return_tensors="pt", padding=True)
    dev = _device(model)
    feats = model.get_text_features(input_ids=inputs["input_ids"].to(dev),
                                    attention_mask=inputs["attention_mask"].to(dev))
    return F.normalize(_pooled(feats).float(), dim=-1).cpu()
