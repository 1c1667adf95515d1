"""Text to image: a frozen text encoder (the course CLIP's text side) joined to a text-conditional UNet.

    prompt --tokenizer--> ids (B, L) --CLIP text transformer (frozen)--> penultimate layer (B, L, D)
                                                                        end-token vector  (B, D)
    x_T ~ N(0, I) --DDIM / DDPM with eps_theta(x_t, t, TextCond(tokens, mask, pooled)), guided--> image

This is the recipe of GLIDE (Nichol et al. 2022, Sec. 2.4 and 4), Imagen (Saharia et al. 2022, Sec. 2.1)
and Stable Diffusion (Rombach et al. 2022, Sec. 3.3), at MNIST size:

- **Token embeddings through cross-attention.** The UNet's 7x7 features query the prompt's tokens
  (``unet.Attention`` in the middle block and the first up block). We take the tokens from the text
  encoder's *penultimate* layer, after its final LayerNorm, as Stable Diffusion 2 does with OpenCLIP. The
  reason is specific to CLIP: its text transformer is causal and its loss reads only the end token, so the
  last layer's other tokens are never used by any loss and receive no training signal; the layer below
  feeds the end token and so is trained. (With one text layer, as in the ``test`` profile, the penultimate
  layer is the embedding layer: word plus position vectors.)
- **The pooled vector is added to the time embedding** (GLIDE's "final token embedding", Sec. 2.4; SDXL's
  pooled text embedding). We use the end-token state after the final LayerNorm, *not* projected into CLIP's
  joint space: the projection is linear, so the UNet's own learned ``pooled_proj`` can absorb it, and the
  unprojected vector has the token width D, which is what ``TextCond`` carries for both parts.
- **Classifier-free guidance** (Ho & Salimans 2022): training replaces the caption by the empty prompt with
  probability ``p_uncond``; the "no condition" at sampling is the encoding of the empty prompt
  (``<start> <end>``), padded to the same length L so both halves batch together (``guidance.Guided``).
- **Captions are fresh every batch** in training (``course_lib.training.text2image``: ``data.captions.random_captions``
  from measured attribute bins, the frozen encoder's outputs computed once into a ``CaptionTable``).

This module is the network side and what is done with it, and knows no data and no training loop:
``TextToImage`` and ``TextToImageLM`` (``from_pretrained`` / ``save_pretrained``, checked prompts, paired-noise
sampling), ``cross_attention_maps`` and ``prompt_widget``; the text encoders are ``networks/text_encoders.py``.
Training and measuring on the digits (``train_text2image``, ``prompt_accuracy``, ``attribute_control``) are in
``course_lib.training.text2image``. ``text.vocabulary`` gives the words and ``parse_prompt`` (the prompt checks
and the digit a prompt names).

A pipeline folder (``save_pretrained`` / ``from_pretrained``; also a training checkpoint folder, written by
``fit``'s ``export`` hook, so training resumes in it; ``pipelines/base.py`` has what all pipelines share):

    config.json                 the UNet config (flat, so ``networks.unet.load_unet`` reads it), T, schedule, the
                                CLIP config it depends on, and sampling defaults (``"sampling"``)
    model.safetensors           the UNet's EMA weights
    text_encoder.safetensors    the frozen CLIP text transformer
    text_encoder_config.json    its transformers ``CLIPTextConfig``
    tokenizer.json, tokenizer_config.json   the word-level tokenizer (``course_lib.text``)
    training.json, trainer/     (training checkpoints only)

Files sit side by side, not in subfolders, because ``course.weights.export`` ships a folder's files.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from .. import store
from ..diffusion.guidance import Guided
from ..diffusion.samplers import SAMPLERS, batched
from ..diffusion.schedules import Schedule, make_schedule
from ..networks.text_encoders import HUB_ID, SHA256, LanguageEncoder, TextEncoder, check_prompt, load_language_encoder
from ..networks.text_encoders import MAX_LENGTH as LM_MAX_LENGTH
from ..networks.unet import TextCond, UNet, UNetConfig
from ..text import vocabulary
from ..text.tokenizer import SPECIAL_TOKENS, check_prompts
from .base import Pipeline, finish, generate_keeping_weights, generator

__all__ = ["TextToImageLM", "load_text2image_lm", "load_text_side", "TextToImage", "check_prompt_type",
           "show_prompt_grid", "write_unet", "write_pipeline", "load_text2image", "cross_attention_maps",
           "prompt_widget"]

MAX_BATCH = 1000         # images per sampling call (the guided network sees twice as many)


def load_text_side(folder: Path, device) -> tuple[TextEncoder, object]:
    """The frozen text encoder and tokenizer a pipeline folder holds (``text_encoder*``, ``tokenizer*``)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..text.tokenizer import load_tokenizer
    cfg = CLIPTextConfig.from_dict(store.read_json(folder / "text_encoder_config.json"))
    model = CLIPTextModel(cfg)
    path = folder / "text_encoder.safetensors"
    store.load_state(model, store.read_tensors(path), path)
    try:
        tokenizer = load_tokenizer(folder)
    except Exception as e:                  # a missing or damaged tokenizer.json
        raise store.CheckpointError(f"cannot read the tokenizer in {folder} ({type(e).__name__}: "
                                          f"{str(e)[:120]}); {store.fix_for(folder)}") from None
    return TextEncoder(model.to(device)), tokenizer


def _write_text_side(folder: Path, encoder: TextEncoder, tokenizer) -> None:
    state = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.clip_text.state_dict().items()}
    save_file(state, str(folder / "text_encoder.safetensors"))
    (folder / "text_encoder_config.json").write_text(encoder.clip_text.config.to_json_string())
    tokenizer.save_pretrained(str(folder))


# ---------------------------------------------------------------------------------------------- the pipeline
class TextToImage(Pipeline):
    """Prompts in, digits out: tokenizer, frozen text encoder, text-conditional UNet, schedule and sampler.

    ``pipe(["a thin two", "9"], n_per_prompt=4)`` returns (8, 1, 28, 28) images in [-1, 1], prompt by prompt.
    """

    kinds = ("text2image",)
    example = "data/weights/text2image"
    fallback_sampling = {"sampler": "ddim", "steps": 50, "guidance": 3.0}

    def __init__(self, unet: UNet, text_encoder: TextEncoder, tokenizer, schedule: Schedule, config: dict,
                 device: torch.device | str = "cpu"):
        super().__init__(config, device)
        self.unet = unet.to(self.device).eval()
        self.text_encoder = text_encoder.to(self.device).eval()
        self.tokenizer, self.config = tokenizer, config
        self.schedule = schedule.to(self.device)
        self.max_length = int(config.get("max_length", LM_MAX_LENGTH))
        vocab = config.get("clip", {}).get("vocabulary")
        self.vocabulary = tuple(vocab[len(SPECIAL_TOKENS):]) if vocab else vocabulary.VOCABULARY
        self.default_steps = int(self.sampling["steps"])
        self.default_guidance = float(self.sampling["guidance"])
        self._null: TextCond | None = None

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> "TextToImage":
        """Load a pipeline folder (``save_pretrained``'s, or a ``train_text2image`` checkpoint)."""
        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "text_encoder.safetensors").is_file():
            raise FileNotFoundError(f"no text-to-image pipeline at {folder} (needs config.json and "
                                    f"text_encoder.safetensors); train one with "
                                    f"`python -m course_lib train text2image`")
        config = store.read_json(folder / "config.json")
        if not isinstance(config, dict) or not config.get("context_dim") or "T" not in config:
            raise store.CheckpointError(f"{folder / 'config.json'} is not a text-to-image model's config: "
                                              f"{folder} holds another kind of model")
        fields = UNetConfig.__dataclass_fields__
        unet = UNet(UNetConfig.from_dict({k: v for k, v in config.items() if k in fields}))
        store.load_weights(unet, folder, device=device)
        encoder, tokenizer = load_text_side(folder, device)
        return cls(unet, encoder, tokenizer, make_schedule(config["schedule"], config["T"], device), config, device)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config, UNet weights, text encoder and tokenizer into ``folder`` (other files are kept)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_pipeline(folder, self.unet, self.text_encoder, self.tokenizer, self.config)
        return folder

    # ------------------------------------------------------------------ text
    def check_prompts(self, prompts: str | Sequence[str]) -> list[str]:
        """The prompts as a list, after every check; nothing is computed before this passes.

        Raises:
            ValueError: no prompts; a prompt that is not a string, is empty, uses a word outside the
                vocabulary (naming it and the nearest known words), is too long, or names two digits or two
                opposite words ("thick thin").
        """
        return check_prompts(check_prompt_type(prompts), self.max_length, self.vocabulary)

    def encode(self, prompts: str | Sequence[str]) -> TextCond:
        """Checked prompts -> ``TextCond`` (tokens (B, L, D), mask (B, L), pooled (B, D)) on the device."""
        prompts = self.check_prompts(prompts)
        enc = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return self.text_encoder(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    def null_cond(self, cond: TextCond) -> TextCond:
        """The "no condition" for a batch like ``cond``: the empty prompt's encoding, same B and L."""
        if self._null is None:
            enc = self.tokenizer([""], padding="max_length", max_length=self.max_length, return_tensors="pt")
            self._null = self.text_encoder(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
        B = cond.tokens.shape[0]
        return TextCond(*(part.expand(B, *part.shape[1:]) for part in self._null))

    def guided(self, guidance: float) -> Guided:
        """The UNet wrapped for classifier-free guidance with scale ``guidance`` (0: unconditional)."""
        return Guided(self.unet, guidance, null_cond=self.null_cond)

    # ------------------------------------------------------------------ generating
    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], n_per_prompt: int = 1, steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, seed: int = 0, eta: float | None = None,
                 clip_x0: bool | str = True, callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """Generate ``n_per_prompt`` images for each prompt.

        Paired noise: the seed fixes ``n_per_prompt`` start noises x_T and *every* prompt starts from the same
        ones (image i of each prompt from noise i), so prompts can be compared image by image. Deterministic
        DDIM (eta = 0) runs all prompts in one batch; a stochastic sampler runs them one by one with the same
        seed, so the noise added at each step is shared too.

        Args:
            prompts: one prompt or a list (checked first: see ``check_prompts``).
            n_per_prompt: images per prompt (>= 1).
            steps: sampling steps (default: the pipeline's, from its folder's ``config.json``).
            guidance: classifier-free guidance scale w (0 unconditional, 1 conditional; default: the pipeline's).
            sampler: "ddim" or "ddpm" (default: the pipeline's). eta: the sampler's noise (None: its default).
            clip_x0: see ``samplers``.
            seed: seeds the start noises (and any step noise).
            callback: passed to the sampler (called once per step per batch).
        Returns:
            (len(prompts) * n_per_prompt, 1, 28, 28) float32 on the CPU, in [-1, 1], prompt after prompt.
        """
        prompts = self.check_prompts(prompts)
        if not isinstance(n_per_prompt, int) or n_per_prompt < 1:
            raise ValueError(f"n_per_prompt must be an integer >= 1, got {n_per_prompt!r}")
        steps, guidance, sampler = self.defaults(steps, guidance, sampler)
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        generator(seed)                                                    # checks the seed
        model = batched(self.guided(guidance), MAX_BATCH, self.device)     # under the device's autocast
        cond = self.encode(prompts)                                        # (P, L, D), ...
        run = SAMPLERS[sampler]
        kwargs = dict(steps=steps, clip_x0=clip_x0, callback=callback, **({} if eta is None else {"eta": eta}))
        n, P = n_per_prompt, len(prompts)
        stochastic = sampler == "ddpm" or (eta or 0.0) > 0
        out = []
        if stochastic:                                                     # one prompt at a time, same seed
            for p in range(P):
                g = torch.Generator().manual_seed(seed)
                x_T = torch.randn(n, 1, 28, 28, generator=g).to(self.device)
                c = TextCond(*(part[p:p + 1].expand(n, *part.shape[1:]) for part in cond))
                out.append(run(model, x_T, self.schedule, generator=g, cond=c, **kwargs).cpu())
        else:                                                              # every prompt in one batch
            x_T = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))  # (n, 1, 28, 28)
            which = torch.arange(P).repeat_interleave(n)                   # prompt of each image
            noise = torch.arange(n).repeat(P)                              # start noise of each image
            for k in range(0, P * n, MAX_BATCH):
                p_idx, n_idx = which[k:k + MAX_BATCH], noise[k:k + MAX_BATCH]
                c = TextCond(*(part[p_idx.to(self.device)] for part in cond))
                out.append(run(model, x_T[n_idx].to(self.device), self.schedule, cond=c, **kwargs).cpu())
        return finish(torch.cat(out))                                      # NaN is an error, not an image

    def generate_with_labels(self, prompts: str | Sequence[str], n_per_prompt: int = 1, **kwargs
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``__call__`` plus the digit each image was asked for: (images, labels (N,) long).

        The label of a prompt is the digit it names (``vocabulary.parse_prompt``); a prompt that names none
        ("a thick digit") gets label -1: it is generated, but there is no right answer to score.
        """
        prompts = self.check_prompts(prompts)
        labels = torch.tensor([_label(p) for p in prompts]).repeat_interleave(n_per_prompt)
        return self(prompts, n_per_prompt, **kwargs), labels

    def grid(self, prompts: str | Sequence[str], n_per_prompt: int = 8, **kwargs):
        """Generate and show one row per prompt, the prompt as the row's title; returns the figure."""
        prompts = self.check_prompts(prompts)
        return show_prompt_grid(self(prompts, n_per_prompt, **kwargs), prompts, n_per_prompt)


def check_prompt_type(prompts):
    """``prompts`` unchanged if it is a string or a sequence of strings (what every text-to-image pipeline takes);
    ``None`` or anything else is a one-line ValueError naming the type, not ``list(None)``'s TypeError."""
    if not isinstance(prompts, str) and not (isinstance(prompts, Sequence)
                                             and all(isinstance(p, str) for p in prompts)):
        raise ValueError(f"prompts must be a string or a list of strings, such as 'a thin two' or "
                         f"['a 3', 'a thick seven'], got {type(prompts).__name__}")
    return prompts


def _label(prompt: str) -> int:
    try:
        digit, _ = vocabulary.parse_prompt(prompt)
    except ValueError:                 # an open-vocabulary prompt naming two digits: no right answer to score
        return -1
    return -1 if digit is None else digit


def show_prompt_grid(images: torch.Tensor, prompts: Sequence[str], n_per_prompt: int, size: float = 0.9):
    """One row per prompt (``images`` in prompt order, as ``TextToImage`` returns them); returns the figure."""
    import matplotlib.pyplot as plt

    from ..plotting import show_images
    if len(images) != len(prompts) * n_per_prompt:
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts x {n_per_prompt}")
    fig, axes = plt.subplots(len(prompts), 1, figsize=(size * n_per_prompt, size * len(prompts) + 0.3),
                             squeeze=False)
    for p, (ax, prompt) in enumerate(zip(axes[:, 0], prompts)):
        show_images(images[p * n_per_prompt:(p + 1) * n_per_prompt], nrow=n_per_prompt, ax=ax, title=f'"{prompt}"')
    fig.tight_layout()
    return fig


def write_unet(folder: Path, unet: nn.Module, config: dict) -> None:
    """Write a pipeline folder's UNet weights (``model.safetensors``) and ``config.json``."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in unet.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def write_pipeline(folder: Path, unet: nn.Module, encoder: TextEncoder, tokenizer, config: dict) -> None:
    """Write a pipeline folder's files (``save_pretrained``; training's ``export`` hook writes them too)."""
    write_unet(folder, unet, config)
    _write_text_side(folder, encoder, tokenizer)


def load_text2image(path: str | Path, device: torch.device | str = "cpu") -> TextToImage:
    """The registry's loader: ``TextToImage.from_pretrained(path, device)``."""
    return TextToImage.from_pretrained(path, device)


@torch.no_grad()
def cross_attention_maps(pipe: TextToImage, prompt: str, seed: int = 0, steps: int | None = None,
                         guidance: float | None = None) -> dict:
    """Where the image looks in the prompt: the cross-attention weights while one image is generated.

    The weights (heads, 49 positions, L tokens) of both cross-attention layers (7x7 middle block and first
    up block) are kept at every sampling step (``unet.Attention.keep_weights``; conditional half of the
    guided batch), then averaged over steps, heads and the two layers.

    Returns:
        {"tokens": the L_real token strings, "maps": (L_real, 7, 7) attention each token receives per
        position, "share": (L_real,) average over positions (sums to 1), "image": (1, 1, 28, 28)}.
    """
    layers = [m for m in (pipe.unet.mid_cross, pipe.unet.up1_cross) if m is not None]
    total, count = None, 0

    def grab():
        nonlocal total, count
        for m in layers:
            w = m.last_weights[:1].float().mean(1)[0]                      # (49, L): conditional half, head mean
            total = w if total is None else total + w
            count += 1

    image = generate_keeping_weights(pipe, layers, prompt, grab, steps=steps, guidance=guidance, seed=seed)
    ids = pipe.tokenizer(prompt, truncation=True, max_length=pipe.max_length)["input_ids"]
    tokens = pipe.tokenizer.convert_ids_to_tokens(ids)
    attn = (total / count)[:, :len(tokens)].cpu()                          # (49, L_real)
    return {"tokens": tokens, "maps": attn.T.reshape(len(tokens), 7, 7), "share": attn.mean(0), "image": image}


# ---------------------------------------------------------------------------------------------- a prompt box
def prompt_widget(pipe: TextToImage, prompt: str = "a thick seven leaning right", n_per_prompt: int = 8,
                  steps: int | None = None, guidance: float | None = None, interactive: bool = True):
    """A text box, a guidance slider and a Generate button (ipywidgets). Without ipywidgets, or with
    ``interactive=False`` (the test profile), it generates once for ``prompt`` and returns that figure.

    A bad prompt shows its error message under the box instead of raising.
    """
    guidance = pipe.default_guidance if guidance is None else guidance
    if interactive:
        try:
            import ipywidgets as widgets
            from IPython.display import display
        except ImportError:
            interactive = False
    import matplotlib.pyplot as plt
    if not interactive:
        fig = pipe.grid([prompt], n_per_prompt, steps=steps, guidance=guidance)
        plt.close(fig)                           # returned, so Jupyter shows it exactly once
        return fig
    box = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="420px"))
    slider = widgets.FloatSlider(value=guidance, min=0.0, max=10.0, step=0.5, description="guidance")
    button = widgets.Button(description="Generate", button_style="primary")
    out = widgets.Output()

    def on_click(_):
        out.clear_output(wait=True)
        with out:
            try:
                t0 = time.perf_counter()
                fig = pipe.grid([box.value], n_per_prompt, steps=steps, guidance=slider.value)
                fig.suptitle(f"w = {slider.value}, {time.perf_counter() - t0:.1f} s", fontsize=8)
                display(fig)
                plt.close(fig)
            except ValueError as e:
                print(f"error: {e}")

    button.on_click(on_click)
    ui = widgets.VBox([widgets.HBox([box, button]), slider, out])
    on_click(None)
    return ui


# ---------------------------------------------------------------------------------------------- the pipeline
class TextToImageLM(TextToImage):
    """Lesson 08's ``TextToImage`` with the frozen language model as its text encoder: any English prompt.

    ``pipe(["a fat seven", "the digit three, written boldly"], n_per_prompt=4)`` returns (8, 1, 28, 28) in
    [-1, 1]; sampling, paired noise and guidance are ``TextToImage``'s.
    """

    def __init__(self, unet, text_encoder: LanguageEncoder, tokenizer, schedule, config: dict,
                 device: torch.device | str = "cpu"):
        super().__init__(unet, text_encoder, tokenizer, schedule, config, device)
        self.vocabulary = None                                  # open: WordPiece splits any word into pieces

    kinds = ("text2image-lm",)
    example = "data/weights/text2image-lm"

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu",
                        encoder_source: str | Path | None = None) -> "TextToImageLM":
        """Load a pipeline folder (the UNet and its config); the encoder comes from ``load_language_encoder``.

        Raises:
            FileNotFoundError: no pipeline in ``folder``. ValueError: a model trained with another text encoder.
            EncoderUnavailable: the encoder's package is missing or altered.
        """
        from ..networks.unet import load_unet
        folder = Path(folder)
        config = _read_config(folder)
        unet, _ = load_unet(folder, device)
        encoder, tokenizer = load_language_encoder(device, encoder_source)
        return cls(unet, encoder, tokenizer, make_schedule(config["schedule"], config["T"], device), config, device)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and the UNet's ``model.safetensors`` into ``folder`` (the encoder is the package's)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_unet(folder, self.unet, self.config)
        return folder

    def check_prompts(self, prompts: str | Sequence[str]) -> list[str]:
        """The prompts as a list, each checked by ``check_prompt`` (any words; empty is an error; too long is
        truncated with a warning)."""
        prompts = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
        if not prompts:
            raise ValueError("no prompts given: pass one or more, e.g. ['a fat seven', 'the digit 3']")
        return [check_prompt(p, self.tokenizer, self.max_length) for p in prompts]


def _read_config(folder: Path) -> dict:
    """A text2image-lm folder's config, after checking it is one and was trained with this encoder."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no text2image-lm pipeline at {folder} (no config.json); train one with "
                                f"`python -m course_lib train text2image-lm`")
    config = store.read_json(folder / "config.json")
    if not isinstance(config, dict) or config.get("model") != "text2image-lm":
        config = config if isinstance(config, dict) else {}
        raise ValueError(f"{folder} holds a {config.get('model', 'non-text-to-image')!r} model, not one trained "
                         f"with the language model: load it with --model {config.get('model', 'text2image')} "
                         f"(or train text2image-lm)")
    spec = config.get("text_encoder", {})
    if spec.get("name") != HUB_ID or spec.get("sha256") != SHA256:
        raise ValueError(f"{folder} was trained with another text encoder ({spec.get('name')}, sha256 "
                         f"{str(spec.get('sha256'))[:12]}...) than {HUB_ID} ({SHA256[:12]}...): retrain it with "
                         f"`python -m course_lib train text2image-lm --out {folder}`")
    return config


def load_text2image_lm(path: str | Path, device: torch.device | str = "cpu") -> TextToImageLM:
    """The registry's loader: ``TextToImageLM.from_pretrained(path, device)``."""
    return TextToImageLM.from_pretrained(path, device)
