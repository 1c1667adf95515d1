"""course_lib: the reference implementation behind *From Noise to Digits*.

Folders by role; each folder's ``__init__`` says what it may import, and ``tests/test_layout.py`` checks it:

    config                  profiles (test / cpu / gpu: the cross-cutting sizes), device, precision, seeding
    paths                   where data, checkpoints and shipped weights live; output paths checked first
    hub                     the Hugging Face Hub, with a deadline
    store                   model folders: safetensors + JSON, atomic writes, CheckpointError, read_training
    registry                every model by name (ModelSpec): find it, train what is missing, get_model,
                            load_pipeline
    plotting                image grids, strips and animations
    exercises               automatic checks for the lessons' exercises

    diffusion/schedules     noise schedules (linear, cosine) and derived quantities
    diffusion/forward       the diffusion model: the forward Markov chain, its posterior, the ELBO
    diffusion/samplers      DDPM and DDIM
    diffusion/flow          flow matching: path, velocity target, Euler and Heun
    diffusion/guidance      classifier-free guidance and autoguidance, as model wrappers

    networks/unet           the denoising model: a small UNet, model(x, t, cond) -> predicted noise
    networks/text_encoders  the frozen text encoders: CLIP's text side (lesson 08), a language model (09)
    networks/clip           CLIP on captioned digits: the network, embeddings, zero-shot reading, loading
    networks/autoencoder    the KL autoencoder of latent diffusion
    networks/prior          DALL-E 2's diffusion prior over CLIP vectors
    networks/classifier     the course classifier
    networks/toy            the toys' networks: lesson 03's 2-D denoiser, lesson 06's word vectors
    networks/mmdit          Stable Diffusion 3's MMDiT, small: two streams, joint attention, adaLN-Zero

    text/vocabulary         digit and attribute words, caption templates, prompt sets, parse_prompt
    text/tokenizer          the tokenizer; prompts checked before any compute

    data/mnist              MNIST as tensors in [-1, 1]
    data/captions           captions from image moments (thick/thin, slant, width)
    data/clusters           k-means clusters of the digits

    training/loop           one training loop for every model (AdamW, warm-up + cosine, EMA, mixed precision), hooks
    training/checkpoints    the trainer's state, resumed exactly (and which runs may resume a folder)
    training/denoiser       the denoiser and class-model runs (each recipe: its presets per profile, its run)
    training/classifier     the course classifier's run
    training/clip           CLIP's caption dataset, contrastive loss and run
    training/text2image     text to image with either text encoder: dataset, encoding cache, runs, measures
    training/unclip         the decoder and the prior's runs; variation measures
    training/latent         the autoencoder and the latent model's runs; step costs
    training/flow           the flow-matching model's run
    training/speedrun       the speedrun: the fastest recipe to good digits on 2 CPU cores, every lever a field
    training/toy            the 2-D toy of lesson 02; lesson 06's word vectors
    training/mini_sd3       the mini SD3's run: latents and captions encoded once, flow matching

    pipelines/base          what every pipeline shares: the folder's kind, sampling defaults, seed, output
    pipelines/class_to_image  DenoiserPipeline, ClassToImage, FlowToImage (the pixel-space UNet models)
    pipelines/text_to_image TextToImage and TextToImageLM (from_pretrained, sampling; no data)
    pipelines/unclip        UnCLIP: prior + decoder, variations
    pipelines/latent        LatentDiffusion: autoencoder + latent UNet
    pipelines/mini_sd3      MiniSD3Pipeline: MiniLM + MMDiT + autoencoder, Euler on the velocity

    measures/metrics        confident fraction, class histogram, FID with its floor
    measures/diagnostics    the checks that catch the classic diffusion bugs (appendix A1)
    measures/comparisons    Part 2's side-by-side measures: spread per prompt, latents vs pixels, flow vs DDPM

    course/book             `make course`: execute every lesson and render the course book
    course/weights          `make weights`: train, measure and export the reference weights
    course/links            the README's "Open in Colab" links, from one repository URL

``from course_lib import setup`` (and the other names of ``config`` below, and ``load_pipeline``) works as
before, but torch is imported only when one of them is first used, so ``python -m course_lib --help`` starts without it.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {**{name: "config" for name in ("Profile", "get_profile", "get_runtime", "seed_everything", "setup")},
         "load_pipeline": "registry"}
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
