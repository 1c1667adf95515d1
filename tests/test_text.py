"""The word-level tokenizer (round trip, special tokens, unknown words) and lesson 06's word vectors."""
import pytest
import torch

from course_lib.exercises import lesson06
from course_lib.measures.metrics import cosine_matrix
from course_lib.text import tokenizer as T
from course_lib.text import vocabulary as C
from course_lib.training.toy import fit_word_vectors


def test_shipped_tokenizer_matches_the_vocabulary():
    tok = T.load_tokenizer()
    fresh = T.build_tokenizer()
    assert tok.get_vocab() == fresh.get_vocab()
    assert list(tok.convert_ids_to_tokens(list(range(3)))) == list(T.SPECIAL_TOKENS)
    assert tok.pad_token_id == 0 and tok.bos_token_id == 2
    assert tok.eos_token_id == 1 and tok.eos_token_id != 2      # CLIP's legacy pooling when eos == 2


def test_round_trip_and_end_token(tmp_path):
    prompts = ["A thick 7, leaning right.", "the number four", "an eight"]
    ids, mask = T.encode(prompts)
    assert ids.shape == mask.shape == (3, T.MAX_LENGTH) and ids.dtype == torch.long
    tok = T.load_tokenizer()
    for p, row, m in zip(prompts, ids, mask):
        n = int(m.sum())
        assert row[0] == tok.bos_token_id and row[n - 1] == tok.eos_token_id
        assert (row[n:] == tok.pad_token_id).all() and (m[:n] == 1).all() and (m[n:] == 0).all()
        assert tok.decode(row, skip_special_tokens=True) == " ".join(C.normalize_prompt(p))
    T.save_tokenizer(tmp_path)                                      # save_pretrained / from_pretrained
    again = T.load_tokenizer(tmp_path)
    assert torch.equal(T.encode(prompts, tokenizer=again)[0], ids)


def test_unknown_word_is_a_clear_error():
    with pytest.raises(ValueError) as e:
        T.encode(["a thikc sevn"])
    msg = str(e.value)
    assert "'thikc'" in msg and "thick" in msg and "'sevn'" in msg and "seven" in msg
    with pytest.raises(ValueError, match="purple"):
        T.validate_prompt("a purple seven")
    with pytest.raises(Exception, match="UNK"):                    # the raw tokenizer has no silent [UNK]
        T.load_tokenizer()("a purple seven")


def test_too_long_and_empty_prompts():
    with pytest.raises(ValueError, match="at most"):
        T.validate_prompt(" ".join(["seven"] * T.MAX_LENGTH))
    with pytest.raises(ValueError, match="empty"):
        T.validate_prompt(" ... ")
    assert T.validate_prompt("Seven!") == ["seven"]


def test_a_refused_long_prompt_is_quoted_short():
    """Reliability round 3, G22: a 3,000-character prompt of unknown words gave a page-long error."""
    prompt = " ".join(f"blorp{i}" for i in range(400))
    with pytest.raises(ValueError) as err:
        T.validate_prompt(prompt)
    message = str(err.value)
    assert "\n" not in message and len(message) < 1_000, len(message)
    assert f"({len(prompt)} characters)" in message and "and 395 more" in message
    with pytest.raises(ValueError, match="has 400 words") as err:
        T.validate_prompt(" ".join(["seven"] * 400))
    assert len(str(err.value)) < 300


def test_word_vectors_learn_meaning_not_the_word():
    model, losses = fit_word_vectors(steps=150)
    assert losses[-1] < 0.3 * losses[0]
    ids, _ = T.encode(["seven", "7", "three", "thick", "bold", "thin"])
    v = model.embedding(ids[:, 1]).detach()                       # the word after <start>
    sim = cosine_matrix(v)
    assert sim[0, 1] > 0.8 and sim[0, 1] > sim[0, 2] + 0.3        # "seven" ~ "7", not "three"
    assert sim[3, 4] > 0.8 and sim[3, 5] < 0.0                    # "thick" ~ "bold", opposite "thin"


def test_lesson06_checks_accept_the_reference_and_reject_wrong_answers():
    assert lesson06.check_place_word(lesson06.reference_place_word)
    assert lesson06.check_analogy(lesson06.reference_analogy)

    def swapped(word):                                              # male and adult axes swapped
        return lesson06.reference_place_word(word)[[1, 0, 2]]
    r = lesson06.check_place_word(swapped)
    assert r.attempted and not r.passed and "hint" in r.message

    def no_skip(a, b, c, vectors):                                  # forgets to skip a, b and c
        target = vectors[a] - vectors[b] + vectors[c]
        return min(vectors, key=lambda w: float((vectors[w] - target).norm()))
    assert not lesson06.check_analogy(no_skip)

    def stub(*args):
        raise NotImplementedError
    r = lesson06.check_place_word(stub)
    assert not r.attempted and not r.passed and "not attempted" in r.message
