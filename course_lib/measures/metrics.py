"""Measuring samples: the numbers built on the course classifier.

Looking at a grid of samples tells you a lot, but to compare samplers, step counts or guidance scales we
need numbers. All of them come from one small convolutional classifier (the network:
``networks/classifier.py``; its training run through the course's own loop: ``training/classifier.py``):

    confident   the fraction of samples the classifier labels with probability >= 0.9: "looks like a digit"
    histogram   how many samples fall into each class: a lopsided histogram means missing digits
    accuracy    for class-conditional samples: how often the classifier agrees with the intended label
    fid         the Frechet distance between Gaussians fitted to the classifier's penultimate-layer features
                of the samples and of N real test digits (Heusel et al. 2017, Sec. 3, "FID"), an MNIST
                analogue of FID: it is *not* comparable with FIDs computed with Inception features
    fid_floor   the same distance between two disjoint sets of N real test digits. FID is biased upwards at
                small N (Chong & Forsyth 2020), so a sample FID means something only next to this floor.

And one number about vectors rather than samples: ``cosine_matrix``, every row of one set against every row
of another (word vectors in lesson 06, text encodings in lessons 08 and 09).
"""
from __future__ import annotations

import torch

from ..config import Profile
from ..data.mnist import load_mnist
from ..networks.classifier import Classifier, classify, label_accuracy

__all__ = ["CONFIDENT", "confident_fraction", "class_histogram", "sqrtm_psd", "gaussian_stats", "frechet_distance",
           "fid_from_features", "real_images", "evaluate_samples", "cosine_matrix"]

CONFIDENT = 0.9          # a sample counts as "a clear digit" when the classifier gives one class p >= 0.9


def confident_fraction(probs: torch.Tensor, threshold: float = CONFIDENT) -> float:
    """The fraction of rows of ``probs`` (N, classes) whose largest probability is >= ``threshold``."""
    return (probs.max(dim=1).values >= threshold).float().mean().item()


def class_histogram(probs: torch.Tensor) -> list[int]:
    """How many rows of ``probs`` (N, classes) are classified as each class: a list of length classes."""
    return torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).tolist()


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


def cosine_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` (N, D) with every row of ``b`` (M, D): (N, M) in [-1, 1]."""
    b = a if b is None else b
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T
