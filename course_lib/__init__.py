"""course_lib: the reference implementation behind *From Noise to Digits*.

One idea per module, in the order the lessons meet them:

    config      profiles (test / cpu / gpu), device and precision, seeding
    paths       where data, checkpoints and shipped weights live; output paths checked before any compute
    data        MNIST as tensors in [-1, 1]
    plotting    image grids, strips and animations
    exercises   automatic checks for the lessons' exercises
    schedules   noise schedules (linear, cosine) and derived quantities
    forward     the diffusion model: the forward Markov chain, its posterior, the ELBO
    unet        the denoising model: a small UNet, model(x, t, cond) -> predicted noise
    train       one training loop for every model (AdamW, warm-up + cosine, EMA, mixed precision)
    checkpoints safetensors folders, written atomically, resumed exactly (and which runs may resume them)
    models      the denoiser and class-model runs; finding, loading or training each model of the course
    samplers    DDPM and DDIM
    metrics     the course classifier, confident fraction, class histogram, FID
    guidance    classifier-free guidance and autoguidance, as model wrappers
    captions    captions from image moments (thick/thin, slant, width)
    text        the tokenizer
    clip        CLIP on captioned digits: the network, embeddings, zero-shot reading, loading (no data)
    clip_training   its caption dataset, contrastive loss and training run (train.fit); find or train it
    pipeline    text to image: the frozen text encoder and TextToImage (from_pretrained, sampling; no data)
    text2image_training   its captioned dataset, encoding cache and training run (train.fit); measuring it
    unclip      DALL-E 2's recipe: the embedding decoder, the diffusion prior over CLIP vectors, UnCLIP (no data)
    unclip_training   their training runs on the digits' CLIP embeddings (train.fit); variation measures
    diagnostics the checks that catch the classic diffusion bugs (appendix A1)
    book        `make course`: execute every lesson and render the course book
    weights     `make weights`: train, measure and export the reference weights
    links       the README's "Open in Colab" links, from one repository URL

``from course_lib import setup`` (and the other names of ``config`` below) works as before, but torch is
imported only when one of them is first used, so ``python -m course_lib --help`` starts without it.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {name: "config" for name in ("Profile", "get_profile", "get_runtime", "seed_everything", "setup")}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    """``course_lib.setup`` and friends, imported from their module on first use (PEP 562)."""
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
