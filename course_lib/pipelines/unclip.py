"""unCLIP on digits (DALL-E 2, Ramesh et al. 2022): a decoder that draws from a CLIP *image* embedding, a
diffusion prior from the CLIP *text* embedding to an image embedding, and image variations.

    prompt --course CLIP text side--> text embedding z_y (B, 64), unit length
           --DiffusionPrior (DDIM over 64-d vectors, x0-prediction, guided)--> image embedding z_i (B, 64)
           --renormalised to the unit sphere--> decoder UNet eps_theta(x_t, t, z_i), guided --> image
    image  --course CLIP image side--> z_i --decoder, new start noises--> variations of the image

- **The decoder** (Ramesh et al. Sec. 2.1) is the course UNet with ``embed_dim`` > 0: the image embedding is
  projected and added to the time embedding (``unet.UNet._embed``). It trains on every training digit's *own*
  embedding, so it needs no captions; the embedding is replaced by a learned null vector with probability
  ``p_uncond`` (an all-zero row in ``cond``) for classifier-free guidance.
- **The prior** (Sec. 2.2) is a diffusion model over the 64-d vector itself. As in unCLIP it predicts the clean
  embedding z_0 directly (x0-prediction, the loss ``|| f(z_t, t, z_y) - z_0 ||^2``), conditioned on the text
  embedding, with the text dropped with probability ``p_uncond`` for guidance. It runs on ``embed_scale`` * z
  (sqrt(64) = 8: unit-variance coordinates, the scale the noise schedule assumes); samples are renormalised.
- **Why a prior at all** (lesson 10): text and image embeddings of the same digit are not the same vector
  (CLIP's loss only ranks them), so a decoder that learned from image embeddings is fed a vector it never saw
  when given a text embedding directly.

This module is the pipeline, and knows no data and no training loop: ``prior_sample``, ``UnCLIP``
(``from_pretrained`` / ``save_pretrained``, checked prompts and images, paired-noise sampling, ``variations``),
``nearest_embeddings``. The prior network is ``networks/prior.py``; training it (``prior_loss``) and measuring
are in ``course_lib.training.unclip``; what all pipelines share is ``pipelines/base.py``.

A pipeline folder (``save_pretrained``; also what ``train_unclip`` writes, sub-checkpoints resuming in place):

    config.json          {"model": "unclip", the decoder, prior and CLIP configs, sampling defaults}
    training.json        the finished run (what ``registry.find_matching`` reads)
    decoder/             config.json (a UNet's, flat: ``networks.unet.load_unet`` reads it) + model.safetensors
    prior/               config.json (``PriorConfig`` + T, schedule) + model.safetensors
    clip/                the frozen course CLIP it was trained on (``networks.clip.save_clip``), with its tokenizer
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .. import store
from ..diffusion.guidance import Guided
from ..diffusion.samplers import SAMPLERS, batched, check_finite, ddim_sample
from ..diffusion.schedules import Schedule, make_schedule
from ..networks.clip import embed_images, embed_text
from ..networks.prior import DiffusionPrior, PriorConfig
from ..networks.unet import UNet
from ..text import vocabulary
from ..text.tokenizer import MAX_LENGTH, SPECIAL_TOKENS, check_prompts
from .base import Pipeline, generator
from .text_to_image import check_prompt_type

__all__ = ["PARTS", "SOURCES", "prior_sample", "nearest_embeddings", "check_images", "UnCLIP", "load_unclip"]

MAX_BATCH = 1000                                   # images per decoder call (the guided network sees twice as many)

PARTS = ("decoder", "prior", "clip")               # the sub-folders of a pipeline folder

SOURCES = ("prior", "text")                        # where ``UnCLIP.__call__`` takes the image embedding from


@torch.no_grad()
def prior_sample(model: Callable, cond: torch.Tensor, schedule: Schedule, *, steps: int | None = None,
                 guidance: float = 1.0, z_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Sample image embeddings for text embeddings with deterministic DDIM (Song et al. 2021, Eq. 12): the
    course's one DDIM, ``samplers.ddim_sample(..., prediction="x0", clip_x0=False)``.

    The prior predicts z0_hat (Ramesh et al. 2022, Sec. 2.2); the noise it implies is eps_hat = (z_t -
    sqrt(alpha_bar_t) z0_hat) / sqrt(1 - alpha_bar_t) (``samplers.predict_x0_eps``), and ``ddim_step`` moves to
    the next t. The embedding is not clipped (its coordinates are not pixels in [-1, 1]). Guidance mixes the
    conditional and unconditional z0_hat (``guidance.Guided``: the mix is linear, so mixing x0 equals mixing eps).

    Args:
        cond: (B, D) unit text embeddings. steps: DDIM steps (None: all T of ``schedule``).
        guidance: w (0 unconditional, 1 conditional, > 1 guided). z_T: (B, D) start noise (default: drawn
            from ``generator``). callback: called with ``{"i", "t", "x_t", "x0_hat"}`` at every step (x_t the
            noisy embedding, x0_hat the prior's prediction), as every sampler calls it.
    Returns:
        (B, D) image embeddings renormalised to unit length (what the decoder trained on).
    """
    B, D = cond.shape
    device = cond.device
    if z_T is None:
        where = generator.device if generator is not None else torch.device("cpu")
        z_T = torch.randn(B, D, generator=generator, device=where)
    if z_T.shape != (B, D):
        raise ValueError(f"z_T must have shape {(B, D)}, got {tuple(z_T.shape)}")
    z = ddim_sample(Guided(model, guidance, null_cond=torch.zeros_like), z_T.to(device), schedule,
                    steps=schedule.T if steps is None else steps, clip_x0=False, cond=cond, callback=callback,
                    prediction="x0")
    return F.normalize(z, dim=-1)                                                # back on the unit sphere


def nearest_embeddings(query: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` rows of ``bank`` (N, D) with the highest cosine similarity to each query (Q, D): (Q * k, D),
    query after query, nearest first (lesson 10's upper bound: real image embeddings closest to a text)."""
    if k < 1 or k > len(bank):
        raise ValueError(f"k must be in 1..{len(bank)}, got {k}")
    idx = (F.normalize(query.float(), dim=-1) @ F.normalize(bank.float(), dim=-1).T).topk(k, dim=-1).indices
    return bank[idx.reshape(-1)]


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Digits for ``variations``: (28, 28), (1, 28, 28) or (B, 1, 28, 28) float in [-1, 1] -> (B, 1, 28, 28).

    Raises:
        ValueError: another type, shape or dtype, an empty batch, or values outside [-1, 1] (e.g. a [0, 255]
            or [0, 1] image is named as such).
    """
    if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
        what = f"a {images.dtype} tensor" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor in [-1, 1], got {what}")
    x = images
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"images must have shape (28, 28), (1, 28, 28) or (B, 1, 28, 28), got {tuple(images.shape)}")
    if len(x) == 0:
        raise ValueError(f"images is an empty batch {tuple(images.shape)}: pass at least one digit")
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1.001 or hi > 1.001:
        raise ValueError(f"images must be in [-1, 1] (the course's range), got values in [{lo:.3g}, {hi:.3g}]"
                         + ("; rescale with x / 127.5 - 1" if hi > 1.5 else ""))
    return x.float()


# ---------------------------------------------------------------------------------------------- the pipeline
def _null_embed(cond: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(cond)            # an all-zero row: the decoder's learned "no embedding"


class UnCLIP(Pipeline):
    """Prompts (or digits) in, digits out: the course CLIP, the diffusion prior and the embedding decoder.

    ``pipe(["a thin two", "9"], n_per_prompt=4)`` returns (8, 1, 28, 28) images in [-1, 1], prompt by prompt;
    ``pipe.variations(digit, 8)`` eight new digits from one digit's image embedding.
    """

    kinds = ("unclip",)
    example = "data/weights/unclip"
    fallback_sampling = {"sampler": "ddim", "steps": 25, "guidance": 3.0, "prior_steps": 25, "prior_guidance": 1.0}

    def __init__(self, decoder: UNet, prior: DiffusionPrior, clip, tokenizer, schedule: Schedule, config: dict,
                 device: torch.device | str = "cpu"):
        super().__init__(config, device)
        self.decoder = decoder.to(self.device).eval()
        self.prior = prior.to(self.device).eval()
        self.clip = clip.to(self.device).eval()
        self.tokenizer, self.config = tokenizer, config
        self.schedule = schedule.to(self.device)
        self.prior_schedule = make_schedule(config["prior"]["schedule"], config["prior"]["T"], self.device)
        self.embed_dim = int(config["prior"]["embed_dim"])
        vocab = config.get("clip", {}).get("vocabulary")
        self.vocabulary = tuple(vocab[len(SPECIAL_TOKENS):]) if vocab else vocabulary.VOCABULARY
        self.max_length = int(config.get("clip", {}).get("max_length", MAX_LENGTH))
        self.default_steps = int(self.sampling["steps"])
        self.default_guidance = float(self.sampling["guidance"])
        self.default_prior_steps = int(self.sampling["prior_steps"])
        self.default_prior_guidance = float(self.sampling["prior_guidance"])

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> "UnCLIP":
        """Load a pipeline folder (``save_pretrained``'s, or a finished ``train_unclip`` checkpoint).

        Raises:
            FileNotFoundError: no folder, or one without ``config.json``, or missing its decoder, prior or CLIP
                (naming which).
            CheckpointError: a config of another kind of model, or damaged weights.
        """
        from ..networks.clip import load_clip
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no unCLIP pipeline at {folder} (looked for {folder / 'config.json'}); "
                                    f"train one with `python -m course_lib train unclip`")
        config = store.read_json(folder / "config.json")
        if not isinstance(config, dict) or config.get("model") != "unclip":
            raise store.CheckpointError(f"{folder / 'config.json'} is not an unCLIP pipeline's config: {folder} "
                                              f"holds another kind of model")
        missing = [p for p in PARTS if not ((folder / p / "config.json").is_file()
                                            and (folder / p / "model.safetensors").is_file())]
        if missing:
            raise FileNotFoundError(f"the unCLIP folder {folder} is missing its {' and '.join(missing)} (looked for "
                                    f"{', '.join(str(folder / p / 'model.safetensors') for p in missing)}); "
                                    f"{store.fix_for(folder)}")
        from ..networks.unet import load_unet
        decoder, dcfg = load_unet(folder / "decoder", device)
        prior = DiffusionPrior(PriorConfig.from_dict(store.read_json(folder / "prior" / "config.json")))
        store.load_weights(prior, folder / "prior", device=device)
        clip, tokenizer = load_clip(folder / "clip", device)
        return cls(decoder, prior, clip, tokenizer, make_schedule(dcfg["schedule"], dcfg["T"], device), config, device)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config.json, decoder/, prior/ and clip/ into ``folder`` (other files are kept)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_part(folder / "decoder", self.decoder, self.config["decoder"])
        write_part(folder / "prior", self.prior, self.config["prior"])
        from ..networks.clip import save_clip
        (folder / "clip").mkdir(exist_ok=True)
        save_clip(self.clip, folder / "clip")
        (folder / "config.json").write_text(json.dumps(self.config, indent=2))
        return folder

    # ------------------------------------------------------------------ embeddings
    def check_prompts(self, prompts: str | Sequence[str]) -> list[str]:
        """The prompts as a list, after the course CLIP's checks (``text.validate_prompt``: known words, length;
        ``vocabulary.parse_prompt``: one digit, no opposite words); nothing is computed before this passes.
        ``None`` or anything but a string or a list of strings is a one-line ValueError, not a TypeError."""
        return check_prompts(check_prompt_type(prompts), self.max_length, self.vocabulary)

    def text_embeddings(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Unit CLIP text embeddings (P, D) on the device, for checked prompts."""
        return embed_text(self.clip, self.tokenizer, self.check_prompts(prompts)).to(self.device)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit CLIP image embeddings (B, D) on the device, for checked digits (``check_images``)."""
        return embed_images(self.clip, check_images(images)).to(self.device)

    def prior_embeddings(self, prompts: str | Sequence[str], n_per_prompt: int = 1, seed: int = 0,
                         steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
        """Image embeddings sampled by the prior: (P * n, D), prompt after prompt; paired noise (embedding i of
        every prompt starts from the same z_T, fixed by ``seed``)."""
        text = self.text_embeddings(prompts)                                      # (P, D)
        n, P = _check_n(n_per_prompt), len(text)
        z_T = torch.randn(n, self.embed_dim, generator=torch.Generator().manual_seed(seed))
        z = prior_sample(self.prior, text.repeat_interleave(n, 0), self.prior_schedule,
                         steps=self.default_prior_steps if steps is None else steps,
                         guidance=self.default_prior_guidance if guidance is None else guidance,
                         z_T=z_T.repeat(P, 1))
        return z

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode(self, embeds: torch.Tensor, n_per_embed: int = 1, steps: int | None = None,
               guidance: float | None = None, sampler: str | None = None, seed: int = 0, eta: float | None = None,
               clip_x0: bool | str = True, callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """Draw ``n_per_embed`` images from each image embedding (E, D): (E * n, 1, 28, 28) in [-1, 1].

        Paired noise as in ``TextToImage``: image i of every embedding starts from start noise i (the seed
        fixes them); a stochastic sampler runs embedding by embedding with the same seed, so its step noise is
        shared too. ``guidance`` is the decoder's w (0: unconditional, 1: conditional; default the pipeline's).
        """
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 2 or embeds.shape[1] != self.embed_dim:
            raise ValueError(f"embeddings must be a (E, {self.embed_dim}) tensor, got "
                             f"{tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__}")
        sampler = self.defaults(sampler=sampler)[2]
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        n, E = _check_n(n_per_embed), len(embeds)
        embeds = F.normalize(embeds.float().to(self.device), dim=-1)
        model = batched(Guided(self.decoder, self.default_guidance if guidance is None else guidance,
                               null_cond=_null_embed), MAX_BATCH, self.device)
        run = SAMPLERS[sampler]
        kwargs = dict(steps=self.default_steps if steps is None else steps, clip_x0=clip_x0, callback=callback,
                      **({} if eta is None else {"eta": eta}))
        out = []
        if sampler == "ddpm" or (eta or 0.0) > 0:
            for e in range(E):
                g = torch.Generator().manual_seed(seed)
                x_T = torch.randn(n, 1, 28, 28, generator=g).to(self.device)
                out.append(run(model, x_T, self.schedule, generator=g, cond=embeds[e:e + 1].expand(n, -1),
                               **kwargs).cpu())
        else:
            x_T = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
            which, noise = torch.arange(E).repeat_interleave(n), torch.arange(n).repeat(E)
            for k in range(0, E * n, MAX_BATCH):
                e_idx, n_idx = which[k:k + MAX_BATCH], noise[k:k + MAX_BATCH]
                out.append(run(model, x_T[n_idx].to(self.device), self.schedule,
                               cond=embeds[e_idx.to(self.device)], **kwargs).cpu())
        return check_finite(torch.cat(out).float()).clamp(-1.0, 1.0)           # NaN is an error, not an image

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], n_per_prompt: int = 1, steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, seed: int = 0, eta: float | None = None,
                 clip_x0: bool | str = True, callback: Callable[[dict], None] | None = None, source: str = "prior",
                 prior_guidance: float | None = None, prior_steps: int | None = None) -> torch.Tensor:
        """Generate ``n_per_prompt`` images for each prompt: text -> image embedding -> decoder.

        Args:
            source: "prior" (unCLIP: the prior samples an image embedding per image, from paired noise) or
                "text" (the shortcut: the text embedding itself fed to the decoder, one for all n images).
            prior_guidance, prior_steps: the prior's guidance w and DDIM steps (default: the pipeline's).
            the rest: as ``decode`` (steps and guidance are the decoder's).
        Returns:
            (len(prompts) * n_per_prompt, 1, 28, 28) float32 on the CPU, in [-1, 1], prompt after prompt.
        """
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}: choose one of {', '.join(SOURCES)}")
        sampler = self.defaults(sampler=sampler)[2]
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        prompts = self.check_prompts(prompts)
        n = _check_n(n_per_prompt)
        kwargs = dict(steps=steps, guidance=guidance, sampler=sampler, seed=seed, eta=eta, clip_x0=clip_x0,
                      callback=callback)
        if source == "text":
            return self.decode(self.text_embeddings(prompts), n, **kwargs)
        z = self.prior_embeddings(prompts, n, seed=seed, steps=prior_steps, guidance=prior_guidance)  # (P*n, D)
        return torch.cat([self.decode_paired(z[p * n:(p + 1) * n], **kwargs) for p in range(len(prompts))])

    @torch.no_grad()
    def decode_paired(self, embeds: torch.Tensor, steps: int | None = None, guidance: float | None = None,
                      sampler: str | None = None, seed: int = 0, eta: float | None = None, clip_x0: bool | str = True,
                      callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """Image i from embedding i of (n, D) and start noise i of ``seed``: (n, 1, 28, 28) in [-1, 1] (what
        ``__call__`` does for each prompt's n prior samples, so other embeddings compare on the same noises)."""
        sampler = self.defaults(sampler=sampler)[2]
        model = batched(Guided(self.decoder, self.default_guidance if guidance is None else guidance,
                               null_cond=_null_embed), MAX_BATCH, self.device)
        g = generator(seed)
        x_T = torch.randn(len(embeds), 1, 28, 28, generator=g).to(self.device)
        stochastic = sampler == "ddpm" or (eta or 0.0) > 0
        x = SAMPLERS[sampler](model, x_T, self.schedule, steps=self.default_steps if steps is None else steps,
                              cond=F.normalize(embeds.float(), dim=-1).to(self.device), clip_x0=clip_x0,
                              callback=callback, generator=g if stochastic else None,
                              **({} if eta is None else {"eta": eta}))
        return check_finite(x.cpu().float()).clamp(-1.0, 1.0)

    def generate_with_labels(self, prompts: str | Sequence[str], n_per_prompt: int = 1, **kwargs
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``__call__`` plus the digit each image was asked for (-1 where a prompt names none)."""
        from .text_to_image import _label
        prompts = self.check_prompts(prompts)
        labels = torch.tensor([_label(p) for p in prompts]).repeat_interleave(n_per_prompt)
        return self(prompts, n_per_prompt, **kwargs), labels

    def using(self, source: str) -> "UnCLIP":
        """A view of this pipeline whose ``__call__`` defaults to ``source`` ("prior" or "text"), so measures
        written for ``TextToImage`` (``prompt_accuracy``, ``attribute_control``) score either way of prompting."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}: choose one of {', '.join(SOURCES)}")
        view = object.__new__(_SourceView)
        view.__dict__.update(self.__dict__)
        view._source = source
        return view

    @torch.no_grad()
    def variations(self, images: torch.Tensor, n: int = 8, steps: int | None = None, guidance: float | None = None,
                   seed: int = 0) -> torch.Tensor:
        """Image variations (Ramesh et al. 2022, Sec. 3.1): encode each digit with CLIP's image side, decode
        ``n`` new digits from that embedding with new start noises. (B * n, 1, 28, 28), image after image.

        Args:
            images: (28, 28), (1, 28, 28) or (B, 1, 28, 28) in [-1, 1] (checked first: ``check_images``).
        """
        return self.decode(self.image_embeddings(images), _check_n(n), steps=steps, guidance=guidance, seed=seed)


class _SourceView(UnCLIP):
    def __call__(self, prompts, n_per_prompt: int = 1, **kwargs):
        kwargs.setdefault("source", self._source)
        return UnCLIP.__call__(self, prompts, n_per_prompt, **kwargs)


def _check_n(n) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of images must be an integer >= 1, got {n!r}")
    return n


def write_part(folder: Path, module: nn.Module, config: dict) -> None:
    """A sub-folder's ``model.safetensors`` and ``config.json`` (``save_pretrained``)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def load_unclip(path: str | Path, device: torch.device | str = "cpu") -> UnCLIP:
    """The registry's loader: ``UnCLIP.from_pretrained(path, device)``."""
    return UnCLIP.from_pretrained(path, device)



# --------------------------------------------------------------------------- editing in embedding space (lesson 10)
def slerp(a: torch.Tensor, b: torch.Tensor, theta: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit vectors: the point at fraction ``theta`` of the great-circle arc from
    ``a`` to ``b`` (Shoemake 1985; Ramesh et al. 2022 interpolate CLIP embeddings this way, Sec. 3.2-3.3).

    Args: a, b: (D,) or (B, D), normalised here. theta: a float or (K,) fractions (0 gives a, 1 gives b).
    Returns: (K, D) for a (K,) theta and (D,) vectors, else the broadcast shape; unit length.
    """
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    theta = torch.as_tensor(theta, dtype=torch.float32)
    if theta.dim() == 1:
        theta = theta[:, None]                                        # (K, 1): one row per fraction
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))   # the angle between them
    out = (torch.sin((1 - theta) * omega) * a + torch.sin(theta * omega) * b) / torch.sin(omega)
    return F.normalize(out, dim=-1)


def text_diff(z_image: torch.Tensor, z_text_from: torch.Tensor, z_text_to: torch.Tensor,
              thetas: Sequence[float]) -> torch.Tensor:
    """DALL-E 2's *text diffs* (Ramesh et al. 2022, Sec. 3.3): edit an image's CLIP embedding towards a new
    caption. The direction is z_d = norm(z_text_to - z_text_from), the difference of the new caption's text
    embedding and one describing the image now; the image embedding is rotated towards it,
    z_theta = slerp(z_image, z_d, theta), for a few growing theta (the paper: up to 0.25-0.5), and each z_theta is
    decoded from the same start noise (the paper keeps the DDIM-inverted noise of the source; we keep a fresh one).

    Args: z_image: (D,) a unit image embedding. z_text_from, z_text_to: (D,) unit text embeddings.
        thetas: K fractions in [0, 1].
    Returns: (K, D) unit embeddings, the first being z_image itself when thetas[0] = 0.
    """
    for name, z in (("z_image", z_image), ("z_text_from", z_text_from), ("z_text_to", z_text_to)):
        if not isinstance(z, torch.Tensor) or z.dim() != 1:
            raise ValueError(f"{name} must be one (D,) embedding, got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    thetas = torch.as_tensor(list(thetas), dtype=torch.float32)
    if thetas.dim() != 1 or not len(thetas) or bool((thetas < 0).any() | (thetas > 1).any()):
        raise ValueError(f"thetas must be fractions in [0, 1], got {thetas.tolist()}")
    direction = F.normalize((z_text_to - z_text_from).float(), dim=-1)
    return slerp(z_image.float().cpu(), direction.cpu(), thetas)
