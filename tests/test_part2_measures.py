"""The small measures Part 2's lessons added (issue 35): the encoder-only probe and its prompts (lesson 09), and
the KL-weight study of the scaling factor (lesson 11)."""
import pytest
import torch

from course_lib.text import vocabulary
from course_lib.training.text2image import digit_free_prompts, nearest_caption_probe, probe_queries


def test_digit_free_prompts_never_name_the_digit_they_ask_for():
    prompts, asked, named = digit_free_prompts()
    assert len(prompts) == 18 and sorted(set(asked)) == list(range(10))
    for p, a, n in zip(prompts, asked, named):
        assert vocabulary.parse_prompt(p)[0] == n != a          # the only digit the words name is another one
        assert abs(a - n) == 1


def test_probe_queries_use_held_out_synonyms_with_their_training_word():
    prompts, digits, attrs = probe_queries()
    assert len(prompts) == len(digits) == len(attrs) == 80
    assert prompts[digits.index(7)] == "a slim seven" and attrs[digits.index(7)] == {"thickness": "thin"}
    from course_lib.training.text2image import HELD_OUT_WORDS
    for p in prompts:                                         # each uses a word no training caption contains
        assert set(vocabulary.normalize_prompt(p)) & set(HELD_OUT_WORDS), p


def _bag_of_words(texts):
    """A toy encoder: one dimension per known word (synonyms map to their training word)."""
    vocab = sorted(vocabulary.VOCABULARY)
    syn = {"slim": "thin", "fat": "thick", "slender": "thin", "heavy": "thick"}
    out = torch.zeros(len(texts), len(vocab))
    for i, t in enumerate(texts):
        for w in vocabulary.normalize_prompt(t):
            w = syn.get(w, w)
            if w in vocab:
                out[i, vocab.index(w)] += 1
    return out + 1e-3


def test_nearest_caption_probe_scores_digit_and_attribute():
    bank = ["a thin seven", "a thick seven", "a seven", "a thick two", "a seven leaning left"]
    queries = ["a slim seven", "a fat seven", "a fat two", "a seven tilted to the left"]
    r = nearest_caption_probe(_bag_of_words, queries, [7, 7, 2, 7],
                              [{"thickness": "thin"}, {"thickness": "thick"}, {"thickness": "thick"},
                               {"slant": "left"}], bank)
    assert r["nearest"][:3] == ["a thin seven", "a thick seven", "a thick two"]
    assert r["digit"] == 1.0 and r["digit_and_attribute"] == 1.0
    wrong = nearest_caption_probe(_bag_of_words, ["a fat seven"], [2], [{"thickness": "thin"}], bank)
    assert wrong["digit"] == 0.0 and wrong["digit_and_attribute"] == 0.0


def test_nearest_caption_probe_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="as many digits"):
        nearest_caption_probe(_bag_of_words, ["a seven"], [7, 2], [{}], ["a seven"])


def test_scaling_factor_by_kl_weight_runs_and_refuses_bad_input():
    from course_lib.config import get_profile
    from course_lib.training.latent import scaling_factor_by_kl_weight
    profile = get_profile("test")
    r = scaling_factor_by_kl_weight(profile, (1e-2, 0.0), steps=2, n_images=64)
    assert set(r) == {1e-2, 0.0} and all(v["scaling_factor"] > 0 for v in r.values())
    with pytest.raises(ValueError, match="steps"):
        scaling_factor_by_kl_weight(profile, (1e-4,), steps=0)
