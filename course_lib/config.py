"""Profiles, device and precision: the one place that decides how big and how fast everything is.

A *profile* is a frozen dataclass of sizes (how many training images, batch size, model width, training and
sampling steps, ...). Three presets exist:

- ``test``: seconds per lesson, on one CPU thread. What pytest and nbval run, so CI executes every lesson.
- ``cpu``:  a 2-core laptop, minutes per model; must still produce good digits (``bench/`` proves it).
- ``gpu``:  a Colab or data-centre GPU, the full-size models. No weights are shipped for it, and each Colab
  notebook starts a fresh runtime, so a model a lesson only *uses* comes from its ``fallback`` profile
  (``cpu``: the shipped weights, with a one-line note; ``models.find_usable``) instead of being retrained
  in every lesson. A lesson under ``gpu`` trains only what it is about (its own demo run).

The profile is chosen automatically (CUDA -> ``gpu``, otherwise ``cpu``; Apple's ``mps`` counts as a device
for the ``cpu`` profile) and overridden with the environment variable ``COURSE_PROFILE``. ``COURSE_DEVICE``
overrides the device. Lessons and library functions take the profile explicitly; nothing reads a global.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Profile", "PROFILES", "Runtime", "COMPILE_MODES", "compile_setting", "get_profile", "get_device",
           "get_runtime", "cpu_runtime", "setup", "seed_everything", "autocast", "inference_autocast",
           "cpu_has_bf16_units", "PRECISIONS", "profile_from_env"]


@dataclass(frozen=True)
class Profile:
    """All sizes a lesson, a training run or a benchmark uses. Notebooks never hard-code a size."""
    name: str
    threads: int | None              # torch CPU threads (None: torch's default). Tests pin 1 thread.
    # --- data
    n_train: int | None              # training images (None: all 60,000)
    n_test: int | None               # test images used for evaluation (None: all 10,000)
    # --- the diffusion process (lessons 01-02)
    T: int                           # number of diffusion steps
    schedule: str                    # "linear" (Ho et al. 2020) or "cosine" (Nichol & Dhariwal 2021)
    # --- the denoising UNet (lesson 03)
    channels: tuple[int, ...]        # channels per resolution level (after the space-to-depth stem)
    attention: bool                  # self-attention at the lowest resolution
    time_dim: int                    # width of the time embedding
    blocks: int                      # residual blocks per level, on the way down and on the way up
    # --- training (one loop for every model)
    batch_size: int
    lr: float
    warmup_steps: int
    train_steps: int                 # unconditional denoiser (lesson 03)
    denoiser_batch: int              # its batch size: on a CPU, more and smaller steps learn more per image
    denoiser_lr: float               # its AdamW learning rate
    guide_step: int                  # the denoiser's EMA weights kept at this step, for autoguidance (lesson 04)
    denoiser_clusters: int           # k-means clusters of the training digits the denoiser is told (no labels)
    self_guidance: float             # guidance scale towards a sample's cluster (lessons 03-04, clusters.py)
    lesson_train_steps: int          # the demo run inside lessons 03, 05 and 08 (>= the full run: it is the run)
    tiny_train_steps: int            # lesson 02's very short run of its tiny network
    class_train_steps: int           # class-conditional denoiser (lesson 05)
    p_uncond: float                  # probability of dropping the condition (classifier-free guidance)
    min_snr_gamma: float | None      # Min-SNR loss weighting for the unconditional denoiser (None: plain MSE)
    ema_decay: float
    checkpoint_every: int
    # --- sampling and measuring (lessons 04, 05, 08)
    sample_steps: int                # DDIM steps used by default
    n_show: int                      # images in a grid
    n_eval: int                      # samples per measurement (accuracy, FID)
    max_frames: int                  # frames in an animation (keeps notebooks small)
    guidance: float                  # default classifier-free guidance scale (diffusers' convention)
    autoguidance: float              # default autoguidance scale for the unconditional denoiser (lesson 04)
    # --- metrics classifier
    classifier_steps: int
    # --- CLIP on captioned digits (lessons 06-07)
    clip_dim: int                    # width of text and vision transformers
    clip_layers: int
    clip_heads: int
    clip_patch: int                  # vision patch size (28 must be divisible by it)
    clip_embed: int                  # shared embedding size
    clip_batch: int
    clip_steps: int
    clip_lr: float
    # --- text-to-image (lesson 08)
    t2i_train_steps: int
    # --- the 2-D toy of lesson 03
    toy_steps: int
    # --- text-to-image with a frozen pretrained language model as text encoder (lesson 09)
    lm_train_steps: int              # its UNet's training steps (the encoder is frozen, not trained)
    lm_templates: int                # caption templates it trains on (captions.TEMPLATES[:k]): each caption
                                     # is encoded once before training, ~4 ms a caption on one core
    # --- flow matching (lesson 12): the class model's UNet, batch and steps on the velocity target
    flow_train_steps: int            # its training steps (the class model's, for an equal-budget comparison)
    flow_steps: int                  # Euler/Heun steps used by default
    flow_guidance: float             # default classifier-free guidance scale on the velocity
    # --- unCLIP on digits (lesson 10): a decoder from CLIP image embeddings, a prior from text embeddings
    unclip_decoder_steps: int        # the decoder UNet's training steps (batches of batch_size)
    unclip_prior_steps: int          # the diffusion prior's training steps
    unclip_prior_batch: int          # its batch size (an MLP over 64-d vectors: a step costs little)
    unclip_prior_width: int          # its hidden width
    unclip_prior_blocks: int         # its residual MLP blocks
    # --- latent diffusion (lesson 11): an autoencoder to 7x7xC, a class-conditional UNet on its latents
    ae_latent_channels: int          # C of the 7x7xC latent (2 vs 4 measured: bench/README.md, "Latent diffusion")
    ae_channels: tuple[int, ...]     # autoencoder widths at 28x28, 14x14 and 7x7
    ae_steps: int                    # autoencoder training steps
    ae_batch: int
    ae_lr: float
    ae_kl_weight: float              # weight of the KL term, per pixel as in Stable Diffusion (1e-6 there)
    latent_unet_channels: tuple[int, ...]   # the latent UNet's widths at 7x7 and 4x4
    latent_train_steps: int          # its training steps (batch_size images each)
    # --- where a lesson finds the models it only uses
    fallback: str | None = None      # profile whose finished models serve when none matches this one

    def replace(self, **changes) -> "Profile":
        """A copy with some fields changed (profiles are frozen)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d


PROFILES: dict[str, Profile] = {
    "test": Profile(
        name="test", threads=1, n_train=2_000, n_test=1_000, T=1000, schedule="cosine",
        channels=(16, 32), attention=True, time_dim=64, blocks=1,
        batch_size=64, lr=2e-3, warmup_steps=20, lesson_train_steps=20, tiny_train_steps=20,
        train_steps=200, denoiser_batch=64, denoiser_lr=2e-3, guide_step=50, denoiser_clusters=10,
        self_guidance=2.0,
        class_train_steps=300, p_uncond=0.1, min_snr_gamma=5.0, ema_decay=0.99, checkpoint_every=100,
        sample_steps=10, n_show=16, n_eval=200, max_frames=8, guidance=3.0, autoguidance=2.0,
        classifier_steps=150,
        clip_dim=32, clip_layers=1, clip_heads=2, clip_patch=7, clip_embed=32, clip_batch=100,
        clip_steps=150, clip_lr=2e-3,
        t2i_train_steps=300, toy_steps=600,
        lm_train_steps=300, lm_templates=1,
        flow_train_steps=150, flow_steps=10, flow_guidance=2.0,
        unclip_decoder_steps=100, unclip_prior_steps=300, unclip_prior_batch=128, unclip_prior_width=128,
        unclip_prior_blocks=2,
        ae_latent_channels=4, ae_channels=(8, 16, 32), ae_steps=100, ae_batch=32, ae_lr=2e-3, ae_kl_weight=1e-4,
        latent_unet_channels=(16, 32), latent_train_steps=200,
    ),
    "cpu": Profile(
        name="cpu", threads=None, n_train=None, n_test=None, T=1000, schedule="cosine",
        channels=(32, 64), attention=False, time_dim=128, blocks=1,
        batch_size=128, lr=2e-3, warmup_steps=100, lesson_train_steps=100, tiny_train_steps=100,
        # the denoiser: batches of 32 learn more per image than 128; a learning rate of 4e-3 measured best of
        # 2e-3, 4e-3 and 8e-3 in one run each, by about 3 points (bench/README.md, "How the cpu recipe of the
        # denoiser was chosen");
        # 4,900 steps fit in 10 minutes on 2 AVX2 cores (569 s; 5,200 took 615 s on 2026-11-26)
        train_steps=4_900, denoiser_batch=32, denoiser_lr=4e-3, guide_step=1_400,
        # told which of 100 k-means clusters each digit is in, then guided towards a drawn cluster: 93.5 % of
        # samples confident at w = 2 against 68 % for the same network without clusters (bench/README.md, "Self-guidance")
        denoiser_clusters=100, self_guidance=2.0,
        class_train_steps=4_000, p_uncond=0.1, min_snr_gamma=5.0, ema_decay=0.999, checkpoint_every=250,
        sample_steps=25, n_show=16, n_eval=1_000, max_frames=25, guidance=3.0, autoguidance=2.0,
        classifier_steps=1_500,
        clip_dim=64, clip_layers=2, clip_heads=4, clip_patch=7, clip_embed=64, clip_batch=256,
        clip_steps=2_000, clip_lr=2e-3,
        t2i_train_steps=4_000, toy_steps=2_000,
        lm_train_steps=2_400, lm_templates=6,
        # the flow model: the class model's steps and batch; w = 1.5 from bench/flow_matching.py's grid
        flow_train_steps=4_000, flow_steps=10, flow_guidance=1.5,
        unclip_decoder_steps=4_000, unclip_prior_steps=3_000, unclip_prior_batch=256, unclip_prior_width=256,
        unclip_prior_blocks=3,
        ae_latent_channels=4, ae_channels=(16, 32, 64), ae_steps=600, ae_batch=128, ae_lr=2e-3, ae_kl_weight=1e-4,
        latent_unet_channels=(32, 64), latent_train_steps=4_000,
    ),
    "gpu": Profile(
        name="gpu", threads=None, n_train=None, n_test=None, T=1000, schedule="cosine",
        channels=(64, 128), attention=True, time_dim=256, blocks=2,
        batch_size=256, lr=1e-3, warmup_steps=200, lesson_train_steps=8_000, tiny_train_steps=500,
        train_steps=8_000, denoiser_batch=256, denoiser_lr=1e-3, guide_step=1_000, denoiser_clusters=100,
        self_guidance=2.0,
        class_train_steps=8_000, p_uncond=0.1, min_snr_gamma=5.0, ema_decay=0.9995, checkpoint_every=1_000,
        sample_steps=50, n_show=16, n_eval=10_000, max_frames=40, guidance=3.0, autoguidance=2.0,
        classifier_steps=3_000,
        clip_dim=128, clip_layers=4, clip_heads=4, clip_patch=4, clip_embed=128, clip_batch=512,
        clip_steps=6_000, clip_lr=5e-4,
        t2i_train_steps=10_000, toy_steps=3_000,
        lm_train_steps=10_000, lm_templates=6, flow_train_steps=8_000, flow_steps=10, flow_guidance=2.0,
        unclip_decoder_steps=10_000, unclip_prior_steps=20_000, unclip_prior_batch=1_024, unclip_prior_width=512,
        unclip_prior_blocks=4,
        ae_latent_channels=4, ae_channels=(32, 64, 128), ae_steps=3_000, ae_batch=256, ae_lr=1e-3,
        ae_kl_weight=1e-4, latent_unet_channels=(64, 128), latent_train_steps=8_000, fallback="cpu",
    ),
}


def get_device(name: str | None = None) -> torch.device:
    """``COURSE_DEVICE`` if set, else the best available: cuda, then mps, then cpu."""
    name = name or os.environ.get("COURSE_DEVICE")
    if name:
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"COURSE_DEVICE={name!r} is not a device: use cpu, cuda, cuda:0 or mps, "
                             f"or unset it") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"COURSE_DEVICE={name!r} but CUDA is not available here; use 'cpu' or unset it.")
        mps = getattr(torch.backends, "mps", None)
        if dev.type == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError(f"COURSE_DEVICE={name!r} but Apple's mps is not available here; use 'cpu' or unset it.")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"COURSE_DEVICE={name!r}: the course runs on cpu, cuda or mps")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def profile_from_env() -> str | None:
    """``COURSE_PROFILE`` as the user meant it: surrounding spaces stripped, lower case; None when unset or
    blank. Windows' cmd keeps the space before ``&&`` (``set COURSE_PROFILE=test && ...`` stores ``"test "``),
    so a raw comparison with ``"test"`` would miss it: read the variable through this function."""
    value = os.environ.get("COURSE_PROFILE", "").strip().lower()
    return value or None


def get_profile(name: str | None = None, device: torch.device | None = None) -> Profile:
    """The profile named ``name``, else ``COURSE_PROFILE``, else ``gpu`` on CUDA and ``cpu`` elsewhere.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    name = (name or "").strip() or profile_from_env()
    if name is None:
        device = device or get_device()
        name = "gpu" if device.type == "cuda" else "cpu"
    key = name.strip().lower()
    if key not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: valid profiles are {', '.join(PROFILES)} "
                         f"(set COURSE_PROFILE to one of them, or unset it to choose automatically)")
    return PROFILES[key]


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed: the device and the mixed-precision policy that goes with it.

    - CUDA with compute capability >= 8.0 (Ampere and later: A100, L4, H100): fp32, bf16 autocast when
      compiling. What was measured fastest: these models are small, an eager step is bound by Python launching
      kernels, and bf16 autocast adds cast kernels, so on an H100 it trained the gpu-profile denoiser at 0.77x
      the fp32 rate (``bench/speedups.py``, bench/README.md). Compiled, the launches go and only bf16 was
      measured (115 s with CUDA graphs, against about 135 s eager fp32 at its measured rate), so it stays.
    - Older CUDA GPUs (Colab's free T4 is 7.5): fp16 autocast with a grad scaler. Not measured: kept because a
      T4 computes fp32 at about 8 TFLOPS against 65 in fp16, slow enough that the GPU, not the launches, may
      bound a step. bf16 is emulated there: forcing it (``COURSE_PRECISION=bf16``) warns. We look at the
      compute capability rather than ``torch.cuda.is_bf16_supported()``, which can report emulated bf16.
    - CPU with hardware bf16 matrix units (Intel AMX, Sapphire Rapids and later): bf16 autocast. On 2 such
      cores it trains the cpu-profile UNet 1.6x faster than fp32 (``bench/throughput.py``).
    - Other CPUs (most laptops) and mps: fp32, where bf16 would be emulated and slower.
    ``COURSE_PRECISION=fp32|bf16|fp16`` overrides the choice.

    ``torch.compile`` is opt-in and only used on CUDA: ``COURSE_COMPILE=1`` compiles the training step in
    mode ``reduce-overhead`` (CUDA graphs), ``COURSE_COMPILE=<mode>`` picks another of ``COMPILE_MODES``.
    The course's models are small, so a GPU step is bound by launching kernels from Python, not by the GPU:
    on an H100 the gpu-profile denoiser (8,000 steps of 256) trained in 183 s compiled in the default mode
    and in 115 s with CUDA graphs, compilation included (``bench/results/``, bench/README.md).
    """
    device: torch.device
    dtype: torch.dtype | None = None          # autocast dtype, None = fp32
    use_grad_scaler: bool = False
    compile: bool = False
    compile_mode: str = "reduce-overhead"      # used only when compile is True (see COMPILE_MODES)
    extras: dict = field(default_factory=dict, compare=False)

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_setting(value: bool | str | None) -> tuple[bool, str]:
    """(compile?, mode) from ``COURSE_COMPILE`` or an argument: 0/1, or one of ``COMPILE_MODES``."""
    if value is None:
        value = os.environ.get("COURSE_COMPILE", "0")
    if isinstance(value, bool):
        return value, "reduce-overhead"
    key = str(value).strip().lower()
    if key in ("", "0", "off", "false", "no"):
        return False, "reduce-overhead"
    if key in ("1", "on", "true", "yes"):
        return True, "reduce-overhead"
    if key in COMPILE_MODES:
        return True, key
    raise ValueError(f"unknown compile setting {value!r} (COURSE_COMPILE): use 0, 1 (mode reduce-overhead) or "
                     f"one of the torch.compile modes {', '.join(COMPILE_MODES)}")


def cpu_has_bf16_units() -> bool:
    """True where the CPU multiplies bf16 matrices in hardware (Intel AMX), so bf16 autocast pays off."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # noqa: BLE001 - a probe that fails means "no"
        return False


def get_runtime(device: torch.device | str | None = None, compile: bool | str | None = None,
                precision: str | None = None) -> Runtime:
    """The device and precision policy (see ``Runtime``); ``precision`` (or ``COURSE_PRECISION``) overrides it,
    ``compile`` (or ``COURSE_COMPILE``: 0, 1 or a mode) turns on ``torch.compile`` on CUDA."""
    device = get_device(str(device)) if device is not None else get_device()
    compile, mode = compile_setting(compile)
    if device.type != "cuda":
        compile = False
    rt = _runtime(device, compile, precision)
    return dataclasses.replace(rt, compile_mode=mode)


def cpu_runtime() -> Runtime:
    """The CPU runtime for what runs on the CPU whatever the device (lesson 03's 2-D toy): ``COURSE_PRECISION``
    applies where a CPU can run it (fp32, bf16); fp16, which needs CUDA, leaves the CPU's own choice."""
    env = (os.environ.get("COURSE_PRECISION") or "").strip().lower()
    if env == "fp16":
        env = "bf16" if cpu_has_bf16_units() else "fp32"       # the CPU's automatic choice
    return get_runtime("cpu", precision=env or None)


def _runtime(device: torch.device, compile: bool, precision: str | None) -> Runtime:
    precision = precision or os.environ.get("COURSE_PRECISION") or None
    if precision is not None:
        key = precision.strip().lower()
        if key not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)} "
                             f"(COURSE_PRECISION), or unset it to choose from the device")
        if key == "fp16" and device.type != "cuda":
            raise ValueError("fp16 autocast needs a CUDA GPU; on this device use bf16 or fp32")
        if key == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
            import warnings
            warnings.warn(f"COURSE_PRECISION=bf16 on {torch.cuda.get_device_name(device)} (compute capability "
                          f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}): this GPU has no bf16 "
                          f"units, so bf16 is emulated and slower; unset COURSE_PRECISION for fp16", stacklevel=3)
        dtype = PRECISIONS[key]
        return Runtime(device, dtype, dtype is torch.float16, compile)
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 8:                          # measured fastest (see the docstring)
            return Runtime(device, torch.bfloat16 if compile else None, False, compile)
        return Runtime(device, torch.float16, True, compile)
    if device.type == "cpu" and cpu_has_bf16_units():
        return Runtime(device, torch.bfloat16, False, False)
    return Runtime(device, None, False, False)


def autocast(rt: Runtime):
    """The autocast context for ``rt`` (a no-op for fp32)."""
    if rt.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=rt.device.type, dtype=rt.dtype)


def inference_autocast(device: torch.device | str):
    """The autocast context for sampling and measuring on ``device``: the runtime's policy on CUDA
    (``get_runtime``: fp16 on a T4, ``COURSE_PRECISION`` honoured), fp32 elsewhere, so that on a CPU a seed
    gives the same samples whatever the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    return autocast(get_runtime(device))


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU ``torch.Generator`` seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


_announced: set = set()


def setup(profile: str | Profile | None = None, seed: int | None = 0, quiet: bool = False
          ) -> tuple[Profile, Runtime]:
    """What a lesson's first cell calls: pick the profile and runtime, set threads, seed, print one line.

    Returns:
        (profile, runtime)
    """
    rt = get_runtime()
    prof = profile if isinstance(profile, Profile) else get_profile(profile, rt.device)
    if prof.threads is not None:
        torch.set_num_threads(prof.threads)
    if seed is not None:
        seed_everything(seed)
    line = (f"From Noise to Digits: profile={prof.name} device={rt.device.type} precision={rt.precision} "
            f"threads={torch.get_num_threads()}" + (f" compile={rt.compile_mode}" if rt.compile else ""))
    if not quiet and line not in _announced:
        _announced.add(line)
        print(line)
        _warn_colab_cpu(rt)
    return prof, rt


def _warn_colab_cpu(rt: Runtime) -> None:
    import sys
    if "google.colab" in sys.modules and rt.device.type != "cuda":
        print("WARNING: this Colab runtime has no GPU. The lessons still run (cpu profile), but slowly.\n"
              "         Switch: Runtime > Change runtime type > Hardware accelerator: GPU (T4), then re-run.")
