"""Captioned digits: measurements on synthetic strokes, per-digit thresholds, captions that tell the truth."""
import pytest
import torch

from course_lib.data import captions
from course_lib.data.mnist import load_mnist
from course_lib.text import vocabulary


def bar(width: int, shear: float = 0.0, length: int = 20) -> torch.Tensor:
    """A (1, 1, 28, 28) image in [-1, 1]: a vertical bar ``width`` px wide, its top moved right by ``shear``/row."""
    img = -torch.ones(1, 1, 28, 28)
    top = (28 - length) // 2
    for r in range(top, top + length):
        c0 = 14 - width // 2 + round(shear * (top + length / 2 - r))
        img[0, 0, r, c0:c0 + width] = 1.0
    return img


@pytest.fixture(scope="module")
def digits():
    x, y = load_mnist("train", n=2000, quiet=True)
    m = captions.measure_attributes(x)
    th = captions.fit_thresholds(m, y)
    return x, y, m, th, captions.attribute_bins(m, y, th)


def test_thickness_of_bars_is_their_width():
    for w in (2, 3, 5):
        t = captions.measure_attributes(bar(w))["thickness"].item()
        assert abs(t - w) < 0.35 * w, (w, t)            # 2 * area / boundary ~ w (ends add a little boundary)
    assert captions.measure_attributes(bar(5))["thickness"] > captions.measure_attributes(bar(2))["thickness"]


def test_slant_sign_and_deslanted_width():
    right, left, upright = bar(3, 0.4), bar(3, -0.4), bar(3)
    m = captions.measure_attributes(torch.cat([right, left, upright]))
    assert m["slant"][0] > 0.3 and m["slant"][1] < -0.3 and abs(m["slant"][2]) < 1e-4
    assert torch.allclose(m["slant"][0], torch.atan(torch.tensor(0.4)), atol=0.05)
    assert (m["width"] - 3).abs().max() < 1.5          # the shear is removed before measuring width
    assert torch.equal(m["height"], torch.full((3,), 20.0))


def test_measure_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected images"):
        captions.measure_attributes(torch.zeros(2, 28, 28))


def test_every_word_exists_for_every_digit(digits):
    x, y, m, th, bins = digits
    for d in range(10):
        for k, a in enumerate(vocabulary.ATTRIBUTES):
            got = set(bins[y == d, k].tolist())
            assert {-1, 1} <= got, f"digit {d} lacks a {a.name} word: {got}"
    assert (th["slant"][:, 0] <= -captions.SLANT_MARGIN).all() and (th["slant"][:, 1] >= captions.SLANT_MARGIN).all()


def test_captions_agree_with_measured_attributes(digits):
    x, y, m, th, bins = digits
    g = torch.Generator().manual_seed(0)
    texts, content = captions.random_captions(y[:500], bins[:500], g)
    words = vocabulary.attribute_words(bins[:500])
    for i, text in enumerate(texts):
        digit, said = vocabulary.parse_prompt(text)
        assert digit == int(y[i]), text
        for name, word in said.items():
            assert word == words[i][name], (text, words[i])          # never a word the image does not earn
        assert torch.equal(vocabulary.caption_content(text), content[i])
    # a thick digit is measured thicker than the thin ones of its class
    k = vocabulary.ATTRIBUTE_NAMES.index("thickness")
    for d in range(10):
        sel = y == d
        assert m["thickness"][sel & (bins[:, k] == 1)].min() > m["thickness"][sel & (bins[:, k] == -1)].max()


def test_compatible_matrix():
    img = torch.tensor([[7, 1, 0, -1], [7, -1, 0, 0], [3, 1, 1, 1]])
    cap = torch.tensor([[7, 0, 0, 0], [7, 1, 0, 0], [7, 0, 0, -1], [3, 0, 1, 0]])
    expected = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(captions.compatible(img, cap), expected)


def test_random_caption_is_reproducible_and_true():
    attrs = {"thickness": "thick", "width": None, "slant": "left"}
    a = [captions.random_caption(8, attrs, torch.Generator().manual_seed(s)) for s in range(30)]
    b = [captions.random_caption(8, attrs, torch.Generator().manual_seed(s)) for s in range(30)]
    assert a == b and len(set(a)) > 10
    for text in a:
        digit, said = vocabulary.parse_prompt(text)
        assert digit == 8 and set(said) <= {"thickness", "slant"}
        assert said.get("thickness", "thick") == "thick" and said.get("slant", "left") == "left"
    plain = {captions.random_caption(8, {}, torch.Generator().manual_seed(s)) for s in range(40)}
    assert {"an eight", "an 8"} & plain and not any(t.startswith("a eight") for t in plain)
    with pytest.raises(ValueError):
        captions.random_caption(10, {}, torch.Generator())


def test_all_captions_is_finite_closed_and_covers_random_captions(digits):
    x, y, m, th, bins = digits
    caps, content = vocabulary.all_captions()
    assert caps == vocabulary.all_captions()[0] and len(caps) == len(set(caps)) == len(content)
    assert {w for c in caps for w in c.split()} == set(vocabulary.VOCABULARY)
    texts, _ = captions.random_captions(y, bins, torch.Generator().manual_seed(1))
    assert set(texts) <= set(caps)
    assert "a photo of the digit seven" in caps and "a thick seven leaning right" in caps and "7" in caps
    i = caps.index("a thick seven leaning right")
    assert content[i].tolist() == [7, 1, 0, 1]


def test_parse_prompt():
    assert vocabulary.parse_prompt("A bold 7, slanted LEFT.") == (7, {"thickness": "thick", "slant": "left"})
    assert vocabulary.parse_prompt("a small thin 3") == (3, {"thickness": "thin"})
    assert vocabulary.parse_prompt("the number four") == (4, {})
    assert vocabulary.parse_prompt("something wide") == (None, {"width": "wide"})
    assert vocabulary.parse_prompt("seven 7") == (7, {})
    with pytest.raises(ValueError, match="two digits"):
        vocabulary.parse_prompt("a seven and a 3")
    with pytest.raises(ValueError, match="thick"):
        vocabulary.parse_prompt("a thick thin one")
