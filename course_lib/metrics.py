"""Measuring samples: a small MNIST classifier, and the numbers built on it.

Looking at a grid of samples tells you a lot, but to compare samplers, step counts or guidance scales we
need numbers. All of them come from one small convolutional classifier, trained by the course's own loop
(``course_lib.train.fit``) and checkpointed like any other model:

    confident   the fraction of samples the classifier labels with probability >= 0.9: "looks like a digit"
    histogram   how many samples fall into each class: a lopsided histogram means missing digits
    accuracy    for class-conditional samples: how often the classifier agrees with the intended label
    fid         the Frechet distance between Gaussians fitted to the classifier's penultimate-layer features
                of the samples and of N real test digits (Heusel et al. 2017, Sec. 3, "FID"), an MNIST
                analogue of FID: it is *not* comparable with FIDs computed with Inception features
    fid_floor   the same distance between two disjoint sets of N real test digits. FID is biased upwards at
                small N (Chong & Forsyth 2020), so a sample FID means something only next to this floor.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints, paths
from .config import Profile, Runtime, get_runtime, inference_autocast
from .data import batch_indices, load_mnist
from .train import TrainResult, fit

__all__ = ["ClassifierConfig", "Classifier", "classifier_config", "random_shift", "train_classifier",
           "load_classifier", "classify", "classifier_test_accuracy", "confident_fraction", "class_histogram",
           "label_accuracy", "sqrtm_psd", "gaussian_stats", "frechet_distance", "fid_from_features",
           "real_images", "evaluate_samples", "CONFIDENT", "CLASSIFIER_LR", "MAX_SHIFT"]

CONFIDENT = 0.9          # a sample counts as "a clear digit" when the classifier gives one class p >= 0.9
CLASSIFIER_LR = 2e-3     # AdamW learning rate for the classifier (a standard value for small convnets)
MAX_SHIFT = 2            # augmentation: random shifts of up to 2 pixels (Simard et al. 2003 used distortions
                         # for MNIST); generated digits are not always centred like MNIST's


# --------------------------------------------------------------------------- the classifier
@dataclass
class ClassifierConfig:
    channels: tuple[int, ...] = (16, 32, 64)   # conv widths at 28x28, 14x14 and 7x7
    features: int = 64                         # width of the penultimate layer (the FID features)
    num_classes: int = 10
    kind: str = "classifier"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        fields = cls.__dataclass_fields__
        d = {k: v for k, v in d.items() if k in fields and k != "kind"}
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class Classifier(nn.Module):
    """Three conv layers and two linear ones (61k parameters with the default config):

        x (B,1,28,28) -> conv5x5 -> ReLU -> maxpool  (B,c0,14,14)
                      -> conv3x3 -> ReLU -> maxpool  (B,c1,7,7)
                      -> conv3x3 -> ReLU -> maxpool  (B,c2,3,3)
                      -> flatten -> linear -> ReLU   (B,features)   <- ``features(x)``, used for FID
                      -> linear                      (B,10)         <- logits
    """

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config or ClassifierConfig()
        c0, c1, c2 = self.config.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c0, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c0, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * 3 * 3, self.config.features), nn.ReLU())
        self.head = nn.Linear(self.config.features, self.config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: (B, 1, 28, 28) in [-1, 1] -> (B, features)."""
        if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected images of shape (B, 1, 28, 28), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))                               # (B, 10) logits


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
    training = checkpoints.read_json(path)
    training.update(test_accuracy=round(accuracy, 6), test_images=n)
    tmp = path.with_name(".training.json.tmp")
    tmp.write_text(json.dumps(training, indent=1))
    os.replace(tmp, path)


def train_classifier(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                     progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the metrics classifier with cross-entropy and random shifts; report its test accuracy.

    Args:
        out: checkpoint folder (default ``paths.default_checkpoint("classifier")``); resumes from it.
        steps: total steps (default ``profile.classifier_steps``), batches of ``profile.batch_size``.
        stop_after: stop after this many steps in this call (demos and tests).
    Returns:
        the ``TrainResult``; use its ``ema_model``. When training is complete, the test accuracy is printed
        and saved in ``training.json`` (``test_accuracy``).
    """
    rt = runtime or get_runtime()
    out = Path(out) if out is not None else paths.default_checkpoint("classifier")
    steps = steps or profile.classifier_steps
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
                 checkpoint_every=profile.checkpoint_every, runtime=rt, desc="train classifier",
                 progress=progress, stop_after=stop_after, rng_device=rt.device)
    if result.step >= steps:
        acc, n = classifier_test_accuracy(result.ema_model, profile, return_n=True)
        _record_accuracy(out, acc, n)
        if progress:
            print(f"classifier: test accuracy {acc:.2%} on {n:,} test images after {steps} steps "
                  f"({result.seconds:.0f} s in this call)")
    return result


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """Load a classifier checkpoint folder (``config.json`` + ``model.safetensors``), in eval mode."""
    path = Path(path)
    cfg = checkpoints.read_config(path, "classifier", "the course classifier", "data/weights/classifier",
                                  needs=("channels",))
    model = Classifier(ClassifierConfig.from_dict(cfg))
    checkpoints.load_weights(model, path, device=device)
    return model.eval()


# --------------------------------------------------------------------------- classifying
@torch.no_grad()
def classify(clf: Classifier, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and penultimate features of images, in batches, on the classifier's device.

    Args: x: (N, 1, 28, 28) in [-1, 1]. Returns: probs (N, 10) and features (N, F), float32 on the CPU.
    """
    if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected images of shape (N, 1, 28, 28), got {tuple(x.shape)}")
    if x.numel() and float(x.min()) >= 0 and float(x.max()) > 2:
        raise ValueError(f"images must be in [-1, 1] (background -1), but these are in [{float(x.min()):g}, "
                         f"{float(x.max()):g}]: pixels in 0..255? map them with x / 127.5 - 1")
    device = next(clf.parameters()).device
    probs, feats = [], []
    for chunk in x.split(batch_size):
        with inference_autocast(device):                           # fp16 on a T4, fp32 on a CPU
            f = clf.features(chunk.to(device).float())
            logits = clf.head(f)
        probs.append(logits.float().softmax(dim=1).cpu())
        feats.append(f.float().cpu())
    return torch.cat(probs), torch.cat(feats)


def classifier_test_accuracy(clf: Classifier, profile: Profile, return_n: bool = False):
    """Accuracy of ``clf`` on the first ``profile.n_test`` MNIST test images (float in [0, 1]).

    With ``return_n``: (accuracy, number of test images)."""
    x, y = load_mnist("test", profile=profile, quiet=True)
    probs, _ = classify(clf, x)
    acc = label_accuracy(probs, y)
    return (acc, len(y)) if return_n else acc


def confident_fraction(probs: torch.Tensor, threshold: float = CONFIDENT) -> float:
    """The fraction of rows of ``probs`` (N, classes) whose largest probability is >= ``threshold``."""
    return (probs.max(dim=1).values >= threshold).float().mean().item()


def class_histogram(probs: torch.Tensor) -> list[int]:
    """How many rows of ``probs`` (N, classes) are classified as each class: a list of length classes."""
    return torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).tolist()


def label_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of rows whose most likely class is the intended label. labels: (N,) long."""
    labels = torch.as_tensor(labels).flatten().cpu()
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(f"got {labels.shape[0]} labels for {probs.shape[0]} samples")
    return (probs.argmax(dim=1) == labels).float().mean().item()


# --------------------------------------------------------------------------- the Frechet distance
def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """The square root of a symmetric positive semi-definite matrix, via its eigendecomposition:

        A = Q diag(lambda) Q^T  ->  A^(1/2) = Q diag(sqrt(max(lambda, 0))) Q^T

    (tiny negative eigenvalues from rounding are set to 0). Computed in float64. a: (d, d)."""
    a = a.double()
    a = (a + a.T) / 2                                                     # symmetrise away rounding
    lam, q = torch.linalg.eigh(a)
    return (q * lam.clamp(min=0).sqrt()) @ q.T


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and unbiased covariance (d, d) of features (N, d), in float64."""
    f = features.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, d) with N >= 2, got {tuple(f.shape)}")
    return f.mean(dim=0), torch.cov(f.T)


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """The Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2) (Dowson & Landau 1982;
    Heusel et al. 2017, Sec. 3):

        d^2 = |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1^(1/2) cov2 cov1^(1/2))^(1/2))

    The inner product is symmetric PSD, so both square roots are symmetric eigendecompositions
    (``sqrtm_psd``); tr (cov1 cov2)^(1/2) = tr (cov1^(1/2) cov2 cov1^(1/2))^(1/2). Returns d^2 (float).
    """
    mu1, mu2, cov1, cov2 = mu1.double(), mu2.double(), cov1.double(), cov2.double()
    s1 = sqrtm_psd(cov1)
    inner = s1 @ cov2 @ s1
    inner = (inner + inner.T) / 2
    tr_covmean = torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_covmean
    return max(d2.item(), 0.0)


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (N1, d) and (N2, d)."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def real_images(profile: Profile, n: int | None = None, device: torch.device | str | None = None
                ) -> torch.Tensor:
    """2n real digits for ``evaluate_samples(real=...)``: two disjoint sets of n (default ``profile.n_eval``).

    They are the first 2n MNIST test images; only when 2n exceeds the 10,000 test images are training
    images appended (e.g. n = 10,000 on the ``gpu`` profile). Returns (2n, 1, 28, 28) in [-1, 1].
    """
    n = n or profile.n_eval
    n_test = min(2 * n, 10_000)
    x, _ = load_mnist("test", n=n_test, device=device, quiet=True)
    if n_test < 2 * n:
        extra, _ = load_mnist("train", n=2 * n - n_test, device=device, quiet=True)
        x = torch.cat([x, extra])
    return x


def evaluate_samples(clf: Classifier, samples: torch.Tensor, labels: torch.Tensor | None = None,
                     real: torch.Tensor | None = None) -> dict:
    """All the measures of a batch of samples.

    Args:
        clf: the metrics classifier (``load_classifier`` / ``get_model("classifier", ...)``).
        samples: (N, 1, 28, 28) in [-1, 1].
        labels: (N,) the intended classes (class-conditional samples), for ``accuracy``.
        real: at least 2N real images (``real_images``): ``fid`` compares the samples with the first N,
            ``fid_floor`` the first N with the next N, so both are measured at the same N.
    Returns:
        {"n", "confident", "histogram", "mean_confidence"} plus "accuracy" (with labels) and "fid",
        "fid_floor" (with real).
    """
    N = samples.shape[0]
    bad = (~torch.isfinite(samples)).flatten(1).any(dim=1).sum().item()
    if bad:
        raise ValueError(f"{bad} of {N} samples contain NaN or inf: the sampler diverged (try clip_x0=True)")
    probs, feats = classify(clf, samples)
    out = {"n": N, "confident": confident_fraction(probs), "histogram": class_histogram(probs),
           "mean_confidence": probs.max(dim=1).values.mean().item()}
    if labels is not None:
        out["accuracy"] = label_accuracy(probs, labels)
    if real is not None:
        if real.shape[0] < 2 * N:
            raise ValueError(f"real must hold at least 2N = {2 * N} images (two disjoint sets of N, for the "
                             f"floor), got {real.shape[0]}; use real_images(profile, n={N})")
        _, real_feats = classify(clf, real[:2 * N])
        out["fid"] = fid_from_features(feats, real_feats[:N])
        out["fid_floor"] = fid_from_features(real_feats[:N], real_feats[N:])
    return out
