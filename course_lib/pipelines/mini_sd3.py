"""A miniature Stable Diffusion 3 (lesson 13): prompts in, digits out, every piece from an earlier lesson.

    prompt --MiniLM, frozen (lesson 09)--> text tokens (B, L, 384), pooled (B, 384)
    z_1 ~ N(0, I) (B, 4, 7, 7) --Euler on dz/dt = v_theta(z, t, text), guided (lesson 12)--> z_0
    z_0 / s --the autoencoder's decoder (lesson 11)--> digits (B, 1, 28, 28)

v_theta is the MMDiT (``networks/mmdit.py``). SD3 (Esser et al. 2024) is the same chain: rectified flow with
logit-normal times (Sec. 3.1), a latent autoencoder (Sec. 5.2.1), frozen text encoders (Sec. 5.2.2) and the
MMDiT (Sec. 4); classifier-free guidance on the velocity (``guidance.Guided``, as lesson 12).

A pipeline folder (``save_pretrained``; also the training checkpoint, written by ``fit``'s ``export``):

    config.json         the MMDiT config, "model": "mini-sd3", the text encoder (name, sha256), the
                        autoencoder (its weights' sha256 and scaling factor) and
                        "sampling": {"sampler": "euler", "steps": N, "guidance": w}, the defaults
    model.safetensors   the MMDiT's EMA weights
    training.json       (and trainer/ in a training checkpoint)

The text encoder is the installed package's (hash-checked, ``load_language_encoder``) and the autoencoder is
found by its hash (``latent.find_autoencoder``: the user's, then the shipped one); neither is copied.
This module knows no data and no training loop (``training/mini_sd3.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import save_file

from .. import store
from ..config import inference_autocast
from ..diffusion.flow import FLOW_SAMPLERS, euler_sample, heun_sample
from ..diffusion.guidance import Guided
from ..diffusion.samplers import batched, check_finite
from ..networks.autoencoder import Autoencoder, load_autoencoder
from ..networks.mmdit import MMDiT, MMDiTConfig
from ..networks.text_encoders import HUB_ID, MAX_LENGTH, SHA256, LanguageEncoder, check_prompt, load_language_encoder
from ..networks.unet import TextCond
from .base import Pipeline, generate_keeping_weights, generator
from .latent import find_autoencoder
from .text_to_image import _label, check_prompt_type, show_prompt_grid

__all__ = ["NAME", "MiniSD3Pipeline", "load_mini_sd3", "write_mmdit", "read_mini_sd3_config", "attention_maps"]

NAME = "mini-sd3"
MAX_BATCH = 500          # images per network call (the guided network sees twice as many)


def read_mini_sd3_config(folder: str | Path) -> dict:
    """A mini-sd3 folder's config, after checking it is one and was trained with this text encoder.

    Raises:
        FileNotFoundError: no ``config.json``. ValueError: another model's folder, or another text encoder.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no {NAME} pipeline at {folder} (no config.json); train one with "
                                f"`python -m course_lib train {NAME}`")
    config = store.read_json(folder / "config.json")
    model = config.get("model", config.get("kind")) if isinstance(config, dict) else None
    if model != NAME:
        raise ValueError(f"{folder} holds {'a ' + repr(model) if model else 'another kind of'} model, not a "
                         f"{NAME} one: load it with --model {model or '...'} (or train {NAME})")
    spec = config.get("text_encoder", {})
    if spec.get("name") != HUB_ID or spec.get("sha256") != SHA256:
        raise ValueError(f"{folder} was trained with another text encoder ({spec.get('name')}, sha256 "
                         f"{str(spec.get('sha256'))[:12]}...) than {HUB_ID} ({SHA256[:12]}...): retrain it with "
                         f"`python -m course_lib train {NAME} --out {folder}`")
    return config


def write_mmdit(folder: Path, model: torch.nn.Module, config: dict) -> None:
    """Write a pipeline folder's ``model.safetensors`` and ``config.json``."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))


class MiniSD3Pipeline(Pipeline):
    """``pipe(["a fat seven", "the numeral 3"], n_per_prompt=4)`` -> (8, 1, 28, 28) in [-1, 1], prompt by prompt.

    Attributes: ``mmdit``, ``text_encoder``, ``tokenizer``, ``autoencoder``, ``config``, ``default_steps``,
    ``default_guidance`` (from the folder's ``"sampling"``).
    """

    kinds = (NAME,)
    example = "data/weights/mini-sd3"
    fallback_sampling = {"sampler": "euler", "steps": 10, "guidance": 3.0}

    def __init__(self, mmdit: MMDiT, text_encoder: LanguageEncoder, tokenizer, autoencoder: Autoencoder,
                 config: dict, device: torch.device | str = "cpu"):
        super().__init__(config, device)
        self.mmdit = mmdit.to(self.device).eval()
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.autoencoder = autoencoder.to(self.device).eval()
        self.max_length = int(config.get("max_length", MAX_LENGTH))
        self.sampler = self.sampling["sampler"]
        self.default_steps = int(self.sampling["steps"])
        self.default_guidance = float(self.sampling["guidance"])
        self._null: TextCond | None = None

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu",
                        encoder_source: str | Path | None = None, autoencoder: str | Path | None = None
                        ) -> "MiniSD3Pipeline":
        """Load a pipeline folder: its MMDiT, the package's text encoder and the autoencoder it was trained on.

        Raises:
            FileNotFoundError: no pipeline in ``folder``; no autoencoder with the recorded hash.
            ValueError: another model's folder, or one trained with another text encoder.
            EncoderUnavailable: the encoder's package is missing or altered.
            CheckpointError: damaged weights (naming the file and how to restore it).
        """
        folder = Path(folder)
        config = read_mini_sd3_config(folder)
        mmdit = MMDiT(MMDiTConfig.from_dict(config))
        store.load_weights(mmdit, folder, device=device)
        ae_folder = Path(autoencoder) if autoencoder is not None else find_autoencoder(config["autoencoder_sha256"])
        ae = load_autoencoder(ae_folder, device)
        encoder, tokenizer = load_language_encoder(device, encoder_source)
        return cls(mmdit, encoder, tokenizer, ae, config, device)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (the encoder and autoencoder are referenced by hash)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_mmdit(folder, self.mmdit, self.config)
        return folder

    # ------------------------------------------------------------------ text
    def check_prompts(self, prompts: str | Sequence[str]) -> list[str]:
        """The prompts as a list, each checked (``text_encoders.check_prompt``): any English words; empty is
        a ValueError; longer than the encoder reads is truncated with a warning."""
        prompts = check_prompt_type(prompts)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given: pass one or more, e.g. ['a fat seven', 'the digit 3']")
        return [check_prompt(p, self.tokenizer, self.max_length) for p in prompts]

    def _encode(self, texts: list[str]) -> TextCond:
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return self.text_encoder(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    def encode(self, prompts: str | Sequence[str]) -> TextCond:
        """Checked prompts -> ``TextCond`` (tokens (P, L, 384), mask (P, L), pooled (P, 384)) on the device."""
        return self._encode(self.check_prompts(prompts))

    def null_cond(self, cond: TextCond) -> TextCond:
        """The "no condition" for a batch like ``cond``: the empty prompt's encoding (training's dropped caption)."""
        if self._null is None:
            self._null = self._encode([""])
        B = cond.tokens.shape[0]
        return TextCond(*(part.expand(B, *part.shape[1:]) for part in self._null))

    # ------------------------------------------------------------------ generating
    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], n_per_prompt: int = 1, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, sampler: str | None = None,
                 callback: Callable[[dict], None] | None = None, return_latents: bool = False) -> torch.Tensor:
        """Generate ``n_per_prompt`` digits for each prompt, every prompt from the same start noises
        (image i of each prompt from noise i: paired noise, so prompts compare image by image).

        Args:
            prompts: one prompt or a list (checked before anything is computed).
            n_per_prompt: images per prompt (>= 1).
            steps: ODE steps (default: the folder's ``sampling.steps``).
            guidance: classifier-free guidance scale w on the velocity (0 unconditional, 1 conditional;
                default: the folder's). sampler: "euler" or "heun" (default: the folder's).
            seed: seeds the start noises. callback: the sampler's, once per step per batch.
            return_latents: also return the latents z_0 (N, 4, 7, 7).
        Returns:
            (len(prompts) * n_per_prompt, 1, 28, 28) float32 on the CPU in [-1, 1], prompt after prompt.
        """
        prompts = self.check_prompts(prompts)
        if isinstance(n_per_prompt, bool) or not isinstance(n_per_prompt, int) or n_per_prompt < 1:
            raise ValueError(f"n_per_prompt must be an integer >= 1, got {n_per_prompt!r}")
        sampler = sampler or self.sampler
        if sampler not in FLOW_SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: the mini-sd3 is a flow model; choose one of "
                             f"{', '.join(FLOW_SAMPLERS)}")
        steps = self.default_steps if steps is None else steps
        w = self.default_guidance if guidance is None else guidance
        model = batched(Guided(self.mmdit, w, null_cond=self.null_cond), MAX_BATCH, self.device)
        cond = self._encode(prompts)                                                  # (P, L, 384), ...
        n, P = n_per_prompt, len(prompts)
        shape = self.autoencoder.latent_shape
        z_1 = torch.randn(n, *shape, generator=generator(seed))                       # (n, 4, 7, 7)
        which = torch.arange(P).repeat_interleave(n).to(self.device)                  # prompt of each image
        c = TextCond(*(part[which] for part in cond))
        ode = {"euler": euler_sample, "heun": heun_sample}[sampler]                  # lesson 12's solvers
        z_0 = ode(model, z_1.repeat(P, 1, 1, 1).to(self.device), steps=steps, cond=c,
                                    callback=callback)
        with inference_autocast(self.device):
            images = torch.cat([self.autoencoder.from_latent(z_0[i:i + MAX_BATCH]).float()
                                for i in range(0, len(z_0), MAX_BATCH)])
        images = check_finite(images.cpu().float()).clamp(-1.0, 1.0)                   # NaN is an error
        return (images, z_0.cpu()) if return_latents else images

    def generate_with_labels(self, prompts: str | Sequence[str], n_per_prompt: int = 1, **kwargs
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``__call__`` plus the digit each image was asked for (-1 where the prompt names none)."""
        prompts = self.check_prompts(prompts)
        labels = torch.tensor([_label(p) for p in prompts]).repeat_interleave(n_per_prompt)
        return self(prompts, n_per_prompt, **kwargs), labels

    def grid(self, prompts: str | Sequence[str], n_per_prompt: int = 8, **kwargs):
        """Generate and show one row per prompt; returns the figure."""
        prompts = self.check_prompts(prompts)
        return show_prompt_grid(self(prompts, n_per_prompt, **kwargs), prompts, n_per_prompt)


def load_mini_sd3(path: str | Path, device: torch.device | str = "cpu") -> MiniSD3Pipeline:
    """The registry's loader: ``MiniSD3Pipeline.from_pretrained(path, device)``."""
    return MiniSD3Pipeline.from_pretrained(path, device)


@torch.no_grad()
def attention_maps(pipe: MiniSD3Pipeline, prompt: str, seed: int = 0, steps: int | None = None,
                   guidance: float | None = None) -> dict:
    """Where the image tokens look in the prompt: the joint attention's image-query -> text-key weights while
    one digit is generated (conditional half of the guided batch), averaged over steps, heads and blocks.

    Returns:
        {"tokens": the prompt's WordPieces ([CLS] ... [SEP]), "maps": (L_real, g, g) the attention each
        token receives from each image position (g = the token grid, 7 for patch 1), "share": (L_real,) the
        fraction of the image tokens' attention that goes to each text token, "text_share": their sum (the
        rest goes to image tokens), "image": (1, 1, 28, 28)}.
    """
    prompt = pipe.check_prompts(prompt)[0]
    ids = pipe.tokenizer(prompt, truncation=True, max_length=pipe.max_length)["input_ids"]
    L_real, L = len(ids), pipe.max_length
    blocks = list(pipe.mmdit.blocks)
    total, count = None, 0

    def grab():
        nonlocal total, count
        for b in blocks:
            w = b.last_weights[0].float().mean(0)                   # (L + N, L + N): first (conditional) image
            part = w[L:, :L_real]                                   # image queries -> real text keys (N, L_real)
            total = part if total is None else total + part
            count += 1

    image = generate_keeping_weights(pipe, blocks, prompt, grab, steps=steps, guidance=guidance, seed=seed)
    attn = (total / count).cpu()                                    # (N, L_real)
    g = pipe.mmdit.config.grid
    return {"tokens": pipe.tokenizer.convert_ids_to_tokens(ids), "maps": attn.T.reshape(L_real, g, g),
            "share": attn.mean(0), "text_share": float(attn.sum(1).mean()), "image": image}
