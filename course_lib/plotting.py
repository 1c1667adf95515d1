"""Pictures: an image grid, a strip of frames over time, a training run's loss curves, and an animation of
a sequence of image batches (the forward or reverse process) that plays in Jupyter and degrades to a static
strip under the ``test`` profile, so executed notebooks stay small and nbval stays fast."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt  # picks a headless backend by itself where there is no display
import numpy as np
import torch

from .config import profile_from_env

__all__ = ["image_grid", "show_images", "save_grid", "show_strip", "animate", "subsample_frames", "plot_losses"]


def _check_images(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() == 3:                             # (B, H, W) -> (B, 1, H, W)
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 1, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    return x.detach().float().cpu()


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1, value_range=(-1.0, 1.0)) -> np.ndarray:
    """Tile a batch into one array ``(rows*H, cols*W)`` (or ``(..., 3)``) with values in ``[0, 1]``.

    Args:
        x: ``(B, C, H, W)`` images in ``value_range`` (default ``[-1, 1]``, the course's range).
        nrow: images per row (default: close to square).
    """
    x = _check_images(x)
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    B, C, H, W = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(B)))
    rows = int(np.ceil(B / nrow))
    grid = torch.ones(C, rows * (H + pad) + pad, nrow * (W + pad) + pad)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = x[i]
    grid = grid.permute(1, 2, 0).numpy()
    return grid[..., 0] if C == 1 else grid


def show_images(x: torch.Tensor, nrow: int | None = None, title: str | None = None, ax=None,
                labels: Sequence | None = None, size: float = 4.0, value_range=(-1.0, 1.0)):
    """Show a batch as a grid; returns the matplotlib Axes. ``labels`` (optional) become the title."""
    x = _check_images(x)
    if ax is None:
        _, ax = plt.subplots(figsize=(size, size))
    ax.imshow(image_grid(x, nrow, value_range=value_range), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if labels is not None and title is None:
        title = " ".join(str(int(l)) if isinstance(l, (int, torch.Tensor, np.integer)) else str(l) for l in labels)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def save_grid(x: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 3) -> Path:
    """Save a batch as a PNG grid (``scale`` pixels per pixel)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = image_grid(x, nrow)
    g = np.kron(g, np.ones((scale, scale))) if g.ndim == 2 else g.repeat(scale, 0).repeat(scale, 1)
    plt.imsave(path, g, cmap="gray", vmin=0, vmax=1)
    return path


def subsample_frames(frames: Sequence, max_frames: int) -> list:
    """At most ``max_frames`` frames, evenly spaced, always keeping the first and the last."""
    frames = list(frames)
    if len(frames) <= max_frames:
        return frames
    idx = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
    return [frames[i] for i in idx]


def show_strip(frames: Sequence[torch.Tensor], captions: Sequence[str] | None = None, n: int = 8,
               max_frames: int = 10, title: str | None = None):
    """A static strip: each column is one moment, each row one image of the batch (first ``n`` images)."""
    keep = subsample_frames(range(len(frames)), max_frames)
    frames = [_check_images(frames[i])[:n] for i in keep]
    captions = [captions[i] for i in keep] if captions is not None else None
    rows = frames[0].shape[0]
    fig, axes = plt.subplots(rows, len(frames), figsize=(1.1 * len(frames), 1.1 * rows), squeeze=False)
    for j, f in enumerate(frames):
        for i in range(rows):
            axes[i, j].imshow(image_grid(f[i:i + 1], pad=0), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_axis_off()
        if captions:
            axes[0, j].set_title(captions[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def animate(frames: Sequence[torch.Tensor], captions: Sequence[str] | None = None, max_frames: int = 25,
            interval_ms: int = 150, static: bool | None = None, nrow: int | None = None):
    """Animate a sequence of image batches as an HTML player (``to_jshtml``) that renders in Jupyter.

    Args:
        frames: a list of ``(B, C, H, W)`` batches, one per moment (e.g. x_t for decreasing t).
        captions: one caption per frame (e.g. ``"t = 500"``).
        max_frames: frames kept (evenly spaced) so the notebook stays small.
        static: draw a static strip instead; default: under the ``test`` profile (``COURSE_PROFILE=test``).

    Returns:
        An ``IPython.display.HTML`` player, or the strip's Figure when static.
    """
    if static is None:
        static = profile_from_env() == "test"
    if static:
        fig = show_strip(frames, captions, max_frames=min(max_frames, 8))
        plt.close(fig)               # returned, so Jupyter shows it exactly once
        return fig
    from IPython.display import HTML
    from matplotlib import animation
    keep = subsample_frames(range(len(frames)), max_frames)
    grids = [image_grid(frames[i], nrow) for i in keep]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.set_axis_off()
    im = ax.imshow(grids[0], cmap="gray", vmin=0, vmax=1)
    title = ax.set_title(captions[keep[0]] if captions else "", fontsize=9)

    def update(k):
        im.set_data(grids[k])
        if captions:
            title.set_text(captions[keep[k]])
        return (im,)

    anim = animation.FuncAnimation(fig, update, frames=len(grids), interval=interval_ms, blit=False)
    html = HTML(anim.to_jshtml(default_mode="once"))
    plt.close(fig)
    return html


def plot_losses(result, smooth: int = 50):
    """The loss curve (raw and smoothed) and, when available, the loss broken down by t.

    ``result``: a ``training.loop.TrainResult``, or a training record (the dict of ``training.json``, or any
    dict with ``"losses"``)."""
    if isinstance(result, dict):
        losses, by_t = result["losses"], _by_t_from_training(result)
    else:
        losses, by_t = result.losses, result.loss_by_t
    ncols = 2 if by_t else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.2), squeeze=False)
    ax = axes[0, 0]
    ax.plot(losses, alpha=0.3, label="per step")
    if len(losses) >= smooth:
        k = torch.ones(smooth) / smooth
        sm = torch.nn.functional.conv1d(torch.tensor(losses).view(1, 1, -1), k.view(1, 1, -1)).flatten()
        ax.plot(range(smooth - 1, len(losses)), sm.tolist(), label=f"mean of {smooth}")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    ax.legend()
    if by_t:
        axes[0, 1].bar(by_t["t_mid"], by_t["loss"], width=0.8 * (by_t["t_mid"][1] - by_t["t_mid"][0]))
        axes[0, 1].set(xlabel="t", ylabel="mean loss", title="loss by timestep t")
    fig.tight_layout()
    return fig


def _by_t_from_training(training: dict) -> dict:
    if "loss_by_t_sum" not in training:
        return {}
    s, c = training["loss_by_t_sum"], training["loss_by_t_count"]
    if not sum(c):
        return {}
    n = len(s)
    T = training.get("config", {}).get("T", n)
    return {"t_mid": [(i + 0.5) * T / n for i in range(n)], "loss": [a / max(b, 1) for a, b in zip(s, c)]}
