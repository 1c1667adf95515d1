"""The toys' networks: lesson 03's 2-D denoiser, and lesson 06's word vectors.

    ToyDenoiser   eps_theta(x_t, t) for 2-D points, an MLP with the UNet's time embedding
    WordVectors   one learned vector per word; a caption's vector is the mean of its words'

The networks only; ``training/toy.py`` trains them (``train_toy``, ``fit_word_vectors``). ``WordVectors``
takes token ids (and the tokenizer's sizes as numbers), never the tokenizer itself.
"""
from __future__ import annotations

import torch
from torch import nn

from .unet import timestep_embedding

__all__ = ["ToyDenoiser", "WordVectors"]


class ToyDenoiser(nn.Module):
    """eps_theta(x_t, t) for 2-D points: an MLP on [x_t, sinusoidal(t)]."""

    def __init__(self, hidden: int = 128, time_dim: int = 32):
        super().__init__()
        self.time_dim = time_dim
        self.net = nn.Sequential(nn.Linear(2 + time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"expected points of shape (B, 2), got {tuple(x.shape)}")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return self.net(torch.cat([x, timestep_embedding(t, self.time_dim)], dim=1))


class WordVectors(nn.Module):
    """One learned vector per word; a caption's vector is the mean of its words' vectors (a bag of words).

    Heads read the caption vector and predict its meaning: the digit (10 classes) and, per attribute,
    which word was said (low / nothing / high).

    Args:
        vocab_size: ids in the tokenizer, special tokens included.
        dim: width of a word vector.
        n_attributes: attribute heads (one per attribute the captions can name).
        n_special: the tokenizer's special ids (0 .. n_special - 1), left out of the mean.
    """

    def __init__(self, vocab_size: int, dim: int, n_attributes: int, n_special: int):
        super().__init__()
        self.n_special = n_special
        self.embedding = nn.Embedding(vocab_size, dim)
        self.digit_head = nn.Linear(dim, 10)
        self.attribute_heads = nn.ModuleList([nn.Linear(dim, 3) for _ in range(n_attributes)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask -> (B, dim) mean of the word vectors (special tokens excluded by the mask)."""
        m = attention_mask.float() * (input_ids >= self.n_special).float()         # (B, L) words only
        v = self.embedding(input_ids)                                               # (B, L, dim)
        return (v * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
