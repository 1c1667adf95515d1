"""Lesson 06's toy word vectors: one learned vector per word, a caption's vector the mean of its words'.

The network only; ``training/toy.py``'s ``fit_word_vectors`` trains it on the captions. It takes token ids
(and the tokenizer's sizes as numbers), never the tokenizer itself, as every network here does.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["WordVectors"]


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
