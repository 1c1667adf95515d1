"""The whole diffusion loop on a 2-D toy, small enough to train in seconds and to *see*: points on a ring
(or a swiss roll) are the "images", a tiny MLP is the denoiser. Same schedule, same loss, same samplers and
the same ``model(x, t, cond=None)`` interface as the digit UNet; only the data and the network are smaller.
``ToyRecipe`` / ``PRESETS`` hold its steps per profile (``recipe_config(profile)``). Lesson 06's toy word
vectors train here too (``fit_word_vectors``). The networks are ``networks/toy.py``'s ``ToyDenoiser`` and
``WordVectors``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Profile, Runtime, cpu_runtime, recipe_preset
from ..diffusion.forward import simple_loss
from ..diffusion.schedules import Schedule, make_schedule
from ..networks.toy import ToyDenoiser, WordVectors
from ..text.tokenizer import MAX_LENGTH, SPECIAL_TOKENS, load_tokenizer
from ..text.vocabulary import ATTRIBUTES, VOCABULARY, all_captions
from .loop import ProgressBar, TrainResult, fit

__all__ = ["ToyRecipe", "PRESETS", "recipe_config", "ring", "swiss_roll", "train_toy", "vector_field",
           "fit_word_vectors"]


@dataclass(frozen=True)
class ToyRecipe:
    """The toys' training steps for one profile."""
    steps: int                       # the 2-D toy's (lessons 03 and 12)
    tiny_steps: int                  # lesson 02's very short run of its tiny network


PRESETS: dict[str, ToyRecipe] = {
    "test": ToyRecipe(steps=600, tiny_steps=20), "cpu": ToyRecipe(steps=2_000, tiny_steps=100),
    "gpu": ToyRecipe(steps=3_000, tiny_steps=500),
}


def recipe_config(profile: Profile) -> ToyRecipe:
    """This recipe's preset for ``profile``, with the profile's ``with_recipe("toy", ...)`` changes."""
    return recipe_preset(PRESETS, "toy", profile)


def ring(n: int, generator: torch.Generator | None = None, radius: float = 0.8, noise: float = 0.03
         ) -> torch.Tensor:
    """``n`` points near a circle of ``radius``: ``(n, 2)``, inside [-1, 1]^2 like our images."""
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    pts = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return pts + noise * torch.randn(n, 2, generator=generator)


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.02) -> torch.Tensor:
    """``n`` points on a 2-D swiss roll scaled into [-1, 1]^2: ``(n, 2)``."""
    s = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([s * s.cos(), s * s.sin()], dim=1) / 15.0
    return pts + noise * torch.randn(n, 2, generator=generator)


def train_toy(profile: Profile, data: str = "ring", runtime: Runtime | None = None, steps: int | None = None,
              T: int = 200, progress: bool = True) -> tuple[ToyDenoiser, Schedule, TrainResult]:
    """Train a ``ToyDenoiser`` on ``data`` (``"ring"`` or ``"swiss_roll"``) with DDPM's simple loss.

    Uses a shorter chain (T=200, cosine schedule) than the digits: a 2-D distribution needs fewer steps.
    Returns (EMA model, schedule, training result).
    """
    rt = runtime or cpu_runtime()                   # tiny MLPs are faster on the CPU than on a GPU
    makers = {"ring": ring, "swiss_roll": swiss_roll}
    if data not in makers:
        raise ValueError(f"data must be one of {', '.join(makers)}, got {data!r}")
    schedule = make_schedule("cosine", T, rt.device)
    points = makers[data](20_000, torch.Generator().manual_seed(0)).to(rt.device)

    def get_batch(g):
        return points[torch.randint(0, len(points), (256,), generator=g).to(rt.device)]

    def loss_fn(m, x0, g):
        return simple_loss(m, x0, schedule, generator=g)

    steps = steps or recipe_config(profile).steps
    res = fit(ToyDenoiser(), loss_fn, get_batch, steps=steps, lr=3e-3, warmup_steps=50,
              batch_size=256, ema_decay=0.99, config={"kind": "toy", "data": data, "T": T}, runtime=rt,
              hooks=[ProgressBar(f"toy ({data})", progress)])
    return res.ema_model, schedule, res


@torch.no_grad()
def vector_field(model: nn.Module, schedule: Schedule, t: int, lim: float = 1.2, n: int = 21):
    """Where the denoiser would move points at step ``t``: the predicted x0 minus x, on an n x n grid.

    Returns (grid points (n*n, 2), arrows (n*n, 2)).
    """
    from ..diffusion.forward import predict_x0_from_eps
    axis = torch.linspace(-lim, lim, n)
    xs = torch.cartesian_prod(axis, axis)
    tt = torch.full((len(xs),), t, dtype=torch.long)
    x0_hat = predict_x0_from_eps(xs, tt, model(xs, tt), schedule)
    return xs, x0_hat - xs


# --------------------------------------------------------------------------- toy word vectors (lesson 06)
def fit_word_vectors(dim: int = 8, steps: int = 300, batch_size: int = 256, lr: float = 0.05,
                     seed: int = 0) -> tuple[WordVectors, list[float]]:
    """Learn word vectors from captions alone, by asking them to predict what each caption means.

    Nothing tells the model that "seven" and "7" (or "thick" and "bold") mean the same; it finds out because
    they predict the same digit (or attribute). Trained on ``vocabulary.all_captions`` with cross-entropy, by
    its own few-line Adam loop (lesson 06 shows it; no EMA, no checkpoint: it trains in about a second).

    Returns:
        (the trained ``WordVectors``, the loss per step).
    """
    captions, content = all_captions()
    enc = load_tokenizer()(captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]      # (K, L): every caption, all in the vocabulary
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)                                   # the initial vectors
    model = WordVectors(len(SPECIAL_TOKENS) + len(VOCABULARY), dim, len(ATTRIBUTES), len(SPECIAL_TOKENS))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(captions), (batch_size,), generator=g)
        h = model(ids[idx], mask[idx])
        loss = nn.functional.cross_entropy(model.digit_head(h), content[idx, 0])
        for k, head in enumerate(model.attribute_heads):
            loss = loss + nn.functional.cross_entropy(head(h), content[idx, 1 + k] + 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses
