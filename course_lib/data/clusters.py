"""Labels for free: k-means groups the training digits by how they look, without reading a single label.

The unconditional denoiser (lessons 03-04) is trained on (image, cluster) pairs, and told the cluster only
90 % of the time (otherwise "no cluster", as in classifier-free guidance). At sampling time a cluster is
drawn as often as it occurs in the data, and guidance pushes each sample towards its cluster:

    c ~ p(c) = sizes / N,   eps = eps(x_t, t, none) + w (eps(x_t, t, c) - eps(x_t, t, none))

With w = 1 that is exact sampling from the mixture p(x) = sum_c p(c) p(x | c): still an unconditional model
of MNIST. With w > 1 it is *self-guidance* (Hu et al. 2023, "Self-Guided Diffusion Models", who cluster
self-supervised features; here the raw pixels are enough): each digit is drawn nearer the middle of its
group, which a network trained for minutes on a CPU needs, since alone it draws clean strokes in the wrong
overall shape.

    kmeans(x, k)           Lloyd's algorithm (Lloyd 1982) from k-means++ seeds (Arthur & Vassilvitskii 2007)
    draw_clusters(sizes)   c ~ p(c), for sampling
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Clusters", "kmeans", "draw_clusters"]


class Clusters(NamedTuple):
    """What ``kmeans`` found."""
    assign: torch.Tensor       # (N,) long: the cluster of each image
    centroids: torch.Tensor    # (k, *image shape): the mean image of each cluster
    sizes: torch.Tensor        # (k,) long: how many images each cluster holds


def _sq_distances(x: torch.Tensor, xx: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """||x_i - c_j||^2 = ||x_i||^2 - 2 x_i.c_j + ||c_j||^2 for all pairs, (N, k): one matrix product
    (``xx`` = ||x_i||^2, computed once)."""
    return torch.addmm(xx[:, None] + c.pow(2).sum(1)[None], x, c.T, alpha=-2).clamp(min=0)


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> Clusters:
    """Group images into ``k`` clusters by Euclidean distance between their pixels.

    Args:
        x: (N, ...) images (any shape per image; flattened here).
        k: the number of clusters, 1 <= k <= N.
        iters: Lloyd iterations (assign each image to its nearest centroid, move each centroid to the mean
            of its images); it stops early when no image changes cluster.
        seed: the k-means++ seeding is random: the same seed gives the same clusters.
    Returns:
        ``Clusters(assign, centroids, sizes)``. An emptied cluster keeps its old centroid (and size 0).
    """
    N = x.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"k must be between 1 and the number of images ({N}), got {k}")
    X = x.reshape(N, -1).float()
    xx = X.pow(2).sum(1)
    g = torch.Generator(device="cpu").manual_seed(seed)
    # k-means++: each new seed is an image drawn with probability proportional to its squared distance to
    # the nearest seed so far, so the seeds spread over the data
    first = int(torch.randint(N, (1,), generator=g))
    C = X[first:first + 1]
    d2 = _sq_distances(X, xx, C)[:, 0]
    for _ in range(k - 1):
        probs = d2.cpu().double()
        i = int(torch.multinomial(probs / probs.sum(), 1, generator=g)) if probs.sum() > 0 else \
            int(torch.randint(N, (1,), generator=g))
        C = torch.cat([C, X[i:i + 1]])
        d2 = torch.minimum(d2, _sq_distances(X, xx, X[i:i + 1])[:, 0])
    assign = _sq_distances(X, xx, C).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(C).index_add_(0, assign, X)
        sizes = torch.bincount(assign, minlength=k)
        C = torch.where(sizes[:, None] > 0, sums / sizes.clamp(min=1)[:, None].to(X.dtype), C)
        new = _sq_distances(X, xx, C).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return Clusters(assign, C.reshape(k, *x.shape[1:]).to(x.dtype), torch.bincount(assign, minlength=k))


def draw_clusters(sizes: torch.Tensor | list[int], n: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` cluster indices drawn as often as each cluster occurs in the data, c ~ p(c) = sizes / N.

    Args:
        sizes: (k,) images per cluster (``Clusters.sizes``, or a checkpoint's ``cluster_sizes``).
        generator: a CPU generator, for reproducible draws.
    Returns: (n,) long on ``device``.
    """
    p = torch.as_tensor(sizes, dtype=torch.float64).cpu()
    if p.dim() != 1 or p.numel() == 0 or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"sizes must be a non-empty 1-D list of counts with a positive total, got {sizes!r}")
    return torch.multinomial(p / p.sum(), n, replacement=True, generator=generator).to(device)
