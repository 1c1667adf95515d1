"""Profiles, device and precision: the one place that decides how big and how fast everything is.

A *profile* is a frozen dataclass of the cross-cutting sizes (training images, T and the schedule, batch size,
sampling steps, ...). Each model's own sizes and steps live beside its recipe in ``training/<recipe>.py``, a
frozen dataclass with one preset per profile (nanoGPT's config per script), read with that module's
``recipe_config(profile)``. Three profiles exist:

- ``test``: seconds per lesson, on one CPU thread. What pytest and nbval run, so CI executes every lesson.
- ``cpu``:  a 2-core laptop, minutes per model; must still produce good digits (``bench/`` proves it).
- ``gpu``:  a Colab or data-centre GPU, the full-size models. No weights are shipped for it, and each Colab
  notebook starts a fresh runtime, so a model a lesson only *uses* comes from its ``fallback`` profile
  (``cpu``: the shipped weights, with a one-line note; ``registry.find_usable``) instead of being retrained
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
from typing import Any

import numpy as np
import torch

__all__ = ["Profile", "PROFILES", "recipe_preset", "Runtime", "COMPILE_MODES", "compile_setting", "get_profile",
           "get_device", "get_runtime", "cpu_runtime", "setup", "seed_everything", "autocast", "inference_autocast",
           "cpu_has_bf16_units", "PRECISIONS", "profile_from_env"]


@dataclass(frozen=True)
class Profile:
    """The cross-cutting sizes every lesson, training run and benchmark shares. Notebooks never hard-code a
    size. Each model's own sizes and steps live beside its recipe (``training/<recipe>.py``: a frozen
    dataclass and its ``PRESETS``, read with ``recipe_config(profile)``), as nanoGPT keeps a config per
    script; ``with_recipe`` changes one of them for a run."""
    name: str
    threads: int | None              # torch CPU threads (None: torch's default). Tests pin 1 thread.
    # --- data
    n_train: int | None              # training images (None: all 60,000)
    n_test: int | None               # test images used for evaluation (None: all 10,000)
    # --- the diffusion process (lessons 01-02)
    T: int                           # number of diffusion steps
    schedule: str                    # "linear" (Ho et al. 2020) or "cosine" (Nichol & Dhariwal 2021)
    # --- training (one loop for every model; a recipe may name its own batch and learning rate)
    batch_size: int
    lr: float
    warmup_steps: int
    ema_decay: float
    checkpoint_every: int
    p_uncond: float                  # probability of dropping the condition (classifier-free guidance)
    lesson_train_steps: int          # the demo run inside lessons 03, 05 and 08 (>= the full run: it is the run)
    # --- sampling and measuring
    sample_steps: int                # DDIM steps used by default
    n_show: int                      # images in a grid
    n_eval: int                      # samples per measurement (accuracy, FID)
    max_frames: int                  # frames in an animation (keeps notebooks small)
    # --- where a lesson finds the models it only uses
    fallback: str | None = None      # profile whose finished models serve when none matches this one
    # --- changes to a recipe's preset: ((recipe, field, value), ...), made by ``with_recipe``
    recipe_changes: tuple[tuple[str, str, Any], ...] = ()

    def replace(self, **changes) -> "Profile":
        """A copy with some fields changed (profiles are frozen)."""
        return dataclasses.replace(self, **changes)

    def with_recipe(self, recipe: str, **changes) -> "Profile":
        """A copy whose ``recipe`` preset (``training/<recipe>.py``'s ``PRESETS[self.name]``) has ``changes``:
        ``profile.with_recipe("denoiser", steps=3)``. Checked when the recipe reads it (``recipe_preset``)."""
        kept = tuple(c for c in self.recipe_changes if not (c[0] == recipe and c[1] in changes))
        return dataclasses.replace(self, recipe_changes=kept + tuple((recipe, k, v) for k, v in changes.items()))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["recipe_changes"] = [list(c) for c in self.recipe_changes]
        return d


def recipe_preset(presets: dict, recipe: str, profile: Profile):
    """``presets[profile.name]`` (a recipe's frozen dataclass) with the profile's changes to ``recipe``.

    Raises:
        ValueError: no preset for this profile's name, or a change names a field the recipe does not have.
    """
    if profile.name not in presets:
        raise ValueError(f"the {recipe!r} recipe has no preset for profile {profile.name!r}: its presets are "
                         f"{', '.join(presets)} (a new profile needs one in course_lib/training/)")
    preset = presets[profile.name]
    changes = {k: v for r, k, v in profile.recipe_changes if r == recipe}
    if changes:
        valid = [f.name for f in dataclasses.fields(preset)]
        unknown = [k for k in changes if k not in valid]
        if unknown:
            raise ValueError(f"the {recipe!r} recipe has no field {unknown[0]!r}: its fields are {', '.join(valid)}")
        preset = dataclasses.replace(preset, **changes)
    return preset


PROFILES: dict[str, Profile] = {
    "test": Profile(
        name="test", threads=1, n_train=2_000, n_test=1_000, T=1000, schedule="cosine",
        batch_size=64, lr=2e-3, warmup_steps=20, ema_decay=0.99, checkpoint_every=100, p_uncond=0.1,
        lesson_train_steps=20, sample_steps=10, n_show=16, n_eval=200, max_frames=8,
    ),
    "cpu": Profile(
        name="cpu", threads=None, n_train=None, n_test=None, T=1000, schedule="cosine",
        batch_size=128, lr=2e-3, warmup_steps=100, ema_decay=0.999, checkpoint_every=250, p_uncond=0.1,
        lesson_train_steps=100, sample_steps=25, n_show=16, n_eval=1_000, max_frames=25,
    ),
    "gpu": Profile(
        name="gpu", threads=None, n_train=None, n_test=None, T=1000, schedule="cosine",
        batch_size=256, lr=1e-3, warmup_steps=200, ema_decay=0.9995, checkpoint_every=1_000, p_uncond=0.1,
        lesson_train_steps=8_000, sample_steps=50, n_show=16, n_eval=10_000, max_frames=40, fallback="cpu",
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
