"""Text: a word-level tokenizer for the captions' closed vocabulary.

The tokenizer is built with Hugging Face ``tokenizers`` and wrapped as a transformers
``PreTrainedTokenizerFast``, so CLIP's text model takes its output as it would take any tokenizer's:

    "A thick 7, leaning right."
      normalise      lower-case, drop sentence punctuation      -> "a thick 7  leaning right "
      pre-tokenise   split on white space and punctuation        -> ["a", "thick", "7", "leaning", "right"]
      WordLevel      one id per word of captions.VOCABULARY
      post-process   <start> ... <end>, then pad to max_length   -> [2, 3, 33, 13, 39, 38, 1, 0, 0, ...]

The special ids are ``<pad>`` = 0, ``<end>`` = 1, ``<start>`` = 2. CLIP's text model pools the hidden state
at the first ``<end>`` token; when ``eos_token_id == 2`` transformers' ``CLIPTextTransformer`` falls back to
the original CLIP's behaviour of pooling at the *largest* token id, so the end token must not be id 2.

A word outside the vocabulary is a ``ValueError`` naming it and the nearest known words, never a silent
``[UNK]`` (the tokenizer has no unknown token at all). The tokenizer ships in ``data/tokenizer/``
(``save_tokenizer`` rebuilds it) and every CLIP checkpoint folder carries a copy.
"""
from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .. import paths
from .vocabulary import ATTRIBUTES, VOCABULARY, all_captions, normalize_prompt, parse_prompt

__all__ = ["SPECIAL_TOKENS", "MAX_LENGTH", "tokenizer_dir", "build_tokenizer", "save_tokenizer", "load_tokenizer",
           "validate_prompt", "check_prompts", "encode"]

PAD, END, START = "<pad>", "<end>", "<start>"

SPECIAL_TOKENS = (PAD, END, START)         # ids 0, 1, 2: the end token is deliberately not id 2

MAX_LENGTH = 16                            # tokens the text encoder reads: <start>, up to 14 words, <end>

_PUNCTUATION = r"[.,!?;:]"                 # dropped by the normaliser (same set as captions.normalize_prompt)


def tokenizer_dir() -> Path:
    """``data/tokenizer``: the saved tokenizer that ships with the course."""
    return paths.data_dir() / "tokenizer"


def build_tokenizer(vocabulary: tuple[str, ...] = VOCABULARY, max_length: int = MAX_LENGTH):
    """A word-level ``PreTrainedTokenizerFast`` over ``vocabulary`` (special tokens first)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(vocabulary))}
    if len(vocab) != len(SPECIAL_TOKENS) + len(vocabulary):
        raise ValueError("the vocabulary repeats a word or a special token")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))   # "[UNK]" is not in vocab: no silent UNK
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                           normalizers.Replace(Regex(_PUNCTUATION), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {END}", special_tokens=[(START, vocab[START]), (END, vocab[END])])
    tok.enable_truncation(max_length)               # the defaults for the raw tokenizer.json; transformers'
    tok.enable_padding(pad_id=vocab[PAD], pad_token=PAD, length=max_length)   # calls set them per call
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=START, eos_token=END,
                                   model_max_length=max_length, padding_side="right", truncation_side="right")


def save_tokenizer(folder: str | Path | None = None) -> Path:
    """Build the tokenizer and ``save_pretrained`` it into ``folder`` (default ``data/tokenizer``)."""
    folder = Path(folder) if folder is not None else tokenizer_dir()
    build_tokenizer().save_pretrained(str(folder))
    return folder


@lru_cache(maxsize=4)
def _load(folder: str):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast.from_pretrained(folder)


def load_tokenizer(folder: str | Path | None = None):
    """``PreTrainedTokenizerFast.from_pretrained(folder)`` (default ``data/tokenizer``), cached per folder.

    Raises:
        FileNotFoundError: when ``folder`` holds no ``tokenizer.json``.
    """
    folder = Path(folder) if folder is not None else tokenizer_dir()
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer in {folder} (no tokenizer.json); rebuild the course's with "
                                f"`python -c 'from course_lib.text import save_tokenizer; save_tokenizer()'`")
    return _load(str(folder.resolve()))

SHOWN_CHARS = 60                # how much of a refused prompt an error message quotes

SHOWN_WORDS = 5                 # how many unknown words it names


def shown(prompt: str) -> str:
    """A prompt as an error message quotes it: its first ``SHOWN_CHARS`` characters, so a refused 3,000-character
    prompt gives a one-line error, not a page."""
    return repr(prompt) if len(prompt) <= SHOWN_CHARS else f"{prompt[:SHOWN_CHARS]!r}... ({len(prompt)} characters)"


def validate_prompt(prompt: str, max_length: int = MAX_LENGTH, vocabulary=VOCABULARY) -> list[str]:
    """The prompt's words, after checking that each is in the vocabulary and that they fit.

    Raises:
        ValueError: naming every unknown word with the nearest known words (``difflib``), or saying how
            many words there are when the prompt is too long for ``max_length`` tokens.
    """
    words = normalize_prompt(prompt)
    if not words:
        raise ValueError(f"empty prompt {shown(prompt)}: describe a digit, e.g. 'a thick seven leaning right'")
    known = set(vocabulary)
    unknown = [w for w in dict.fromkeys(words) if w not in known]
    if unknown:
        parts = []
        for w in unknown[:SHOWN_WORDS]:
            near = difflib.get_close_matches(w, vocabulary, n=3, cutoff=0.5)
            parts.append(f"{w!r} (nearest known: {', '.join(near)})" if near else f"{w!r} (no close word)")
        if len(unknown) > SHOWN_WORDS:
            parts.append(f"and {len(unknown) - SHOWN_WORDS} more")
        raise ValueError(f"prompt {shown(prompt)} uses words outside the vocabulary: {'; '.join(parts)}. "
                         f"Known words: {' '.join(vocabulary)}")
    if len(words) > max_length - 2:
        raise ValueError(f"prompt {shown(prompt)} has {len(words)} words; the text encoder reads at most "
                         f"{max_length - 2} (max_length={max_length} tokens, with <start> and <end>)")
    return words


def check_prompts(prompts, max_length: int = MAX_LENGTH, vocabulary=VOCABULARY) -> list[str]:
    """One prompt or several, as a list, after every check a text-to-image model makes before computing:
    each prompt's words (``validate_prompt``) and its content (``vocabulary.parse_prompt``: one digit, no two
    opposite words such as "thick thin").

    Raises:
        ValueError: no prompts, or the first prompt that fails a check, naming why.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompts given: pass one or more, e.g. ['a thick seven', '3']")
    for p in prompts:
        validate_prompt(p, max_length, vocabulary)
        parse_prompt(p)
    return prompts


def encode(prompts: str | list[str], max_length: int = MAX_LENGTH, tokenizer=None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and tokenise prompts, padded to ``max_length``.

    Returns:
        input_ids: ``(B, max_length)`` long, ``<start> words <end> <pad>...``; attention_mask: ``(B, max_length)``
        long, 1 on real tokens.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    for p in prompts:
        validate_prompt(p, max_length)
    tok = tokenizer if tokenizer is not None else load_tokenizer()
    enc = tok(prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
