"""The course classifier's training run (through ``loop.fit``): random shifts, AdamW, the test accuracy.

    ClassifierRecipe, PRESETS            its steps per profile; ``recipe_config(profile)``
    classifier_config, train_classifier, classifier_test_accuracy

The network is ``networks/classifier.py``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import paths, store
from ..config import Profile, Runtime, get_runtime, recipe_preset
from ..data.mnist import batch_indices, load_mnist
from ..networks.classifier import Classifier, ClassifierConfig, classify, label_accuracy
from .loop import ProgressBar, TrainResult, fit

__all__ = ["ClassifierRecipe", "PRESETS", "recipe_config", "CLASSIFIER_LR", "MAX_SHIFT", "classifier_config",
           "random_shift", "train_classifier", "classifier_test_accuracy"]

CLASSIFIER_LR = 2e-3     # AdamW learning rate for the classifier (a standard value for small convnets)

MAX_SHIFT = 2            # augmentation: random shifts of up to 2 pixels (Simard et al. 2003 used distortions


@dataclass(frozen=True)
class ClassifierRecipe:
    """The classifier's training steps for one profile (batches of ``profile.batch_size``)."""
    steps: int


PRESETS: dict[str, ClassifierRecipe] = {
    "test": ClassifierRecipe(steps=150), "cpu": ClassifierRecipe(steps=1_500), "gpu": ClassifierRecipe(steps=3_000),
}


def recipe_config(profile: Profile) -> ClassifierRecipe:
    """This recipe's preset for ``profile``, with the profile's ``with_recipe("classifier", ...)`` changes."""
    return recipe_preset(PRESETS, "classifier", profile)


def classifier_config(profile: Profile) -> dict:
    """The classifier's config for ``profile`` (JSON-able; a checkpoint is reused only when it is equal).

    The network is the same for every profile, so the measures mean the same everywhere; the training data
    differs (``n_train``)."""
    return {**ClassifierConfig().to_dict(), "n_train": profile.n_train, "max_shift": MAX_SHIFT}


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a random (dy, dx) in [-max_shift, max_shift]^2, filling with background (-1).

    Args: x: (B, C, H, W). Returns: like x.
    """
    if max_shift == 0:
        return x
    B, C, H, W = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), value=-1.0)                           # (B, C, H + 2m, W + 2m)
    dy, dx = torch.randint(0, 2 * m + 1, (2, B), generator=generator, device=generator.device).to(x.device)
    rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]   # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :]   # (B, 1, 1, W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[b, c, rows, cols]                                       # (B, C, H, W)


def _record_accuracy(out: Path, accuracy: float, n: int) -> None:
    """Add the test accuracy to ``training.json`` (written to a temporary file, then renamed)."""
    path = out / "training.json"
    training = store.read_json(path)
    training.update(test_accuracy=round(accuracy, 6), test_images=n)
    tmp = path.with_name(".training.json.tmp")
    tmp.write_text(json.dumps(training, indent=1))
    os.replace(tmp, path)


def train_classifier(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                     progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the metrics classifier with cross-entropy and random shifts; report its test accuracy.

    Args:
        out: checkpoint folder (default ``paths.default_checkpoint("classifier")``); resumes from it.
        steps: total steps (default the recipe's ``steps``), batches of ``profile.batch_size``.
        stop_after: stop after this many steps in this call (demos and tests).
    Returns:
        the ``TrainResult``; use its ``ema_model``. When training is complete, the test accuracy is printed
        and saved in ``training.json`` (``test_accuracy``).
    """
    rt = runtime or get_runtime()
    out = Path(out) if out is not None else paths.default_checkpoint("classifier")
    steps = steps or recipe_config(profile).steps
    cfg = classifier_config(profile)
    x, y = load_mnist("train", profile=profile, device=rt.device)
    torch.manual_seed(0)                       # the initial weights do not depend on what ran before
    model = Classifier(ClassifierConfig.from_dict(cfg))

    def get_batch(g: torch.Generator):
        idx = batch_indices(len(x), profile.batch_size, g, rt.device)
        return random_shift(x[idx], MAX_SHIFT, g), y[idx]

    def loss_fn(m: nn.Module, batch, g: torch.Generator) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(m(images).float(), labels)

    meta = {"kind": "classifier", "profile": profile.name, "data": f"MNIST train, {len(x)} images"}
    result = fit(model, loss_fn, get_batch, steps=steps, lr=CLASSIFIER_LR,
                 warmup_steps=min(profile.warmup_steps, steps // 10), batch_size=profile.batch_size,
                 ema_decay=profile.ema_decay, config=cfg, meta=meta, out=out,
                 checkpoint_every=profile.checkpoint_every, runtime=rt, stop_after=stop_after,
                 hooks=[ProgressBar("train classifier", progress)], rng_device=rt.device)
    if result.step >= steps:
        acc, n = classifier_test_accuracy(result.ema_model, profile, return_n=True)
        _record_accuracy(out, acc, n)
        if progress:
            print(f"classifier: test accuracy {acc:.2%} on {n:,} test images after {steps} steps "
                  f"({result.seconds:.0f} s in this call)")
    return result


def classifier_test_accuracy(clf: Classifier, profile: Profile, return_n: bool = False):
    """Accuracy of ``clf`` on the first ``profile.n_test`` MNIST test images (float in [0, 1]).

    With ``return_n``: (accuracy, number of test images)."""
    x, y = load_mnist("test", profile=profile, quiet=True)
    probs, _ = classify(clf, x)
    acc = label_accuracy(probs, y)
    return (acc, len(y)) if return_n else acc
