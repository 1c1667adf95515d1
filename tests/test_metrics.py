"""Sample-quality measures: the Frechet distance against closed forms, the classifier's counts on hand-made
probabilities, the augmentation, and a test-profile classifier that beats chance by a wide margin."""
import json
import math

import pytest
import torch

from course_lib.measures import metrics
from course_lib.networks import classifier
from course_lib.training import classifier as classifier_training
from course_lib.training.classifier import recipe_config as classifier_recipe

torch.set_num_threads(1)


def random_psd(d, seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, rank or d, generator=g, dtype=torch.float64)
    return a @ a.T / (rank or d)


# --------------------------------------------------------------------------- matrix square root and FD
def test_sqrtm_psd():
    for rank in (None, 3):                                             # full rank, and singular
        a = random_psd(6, 0, rank)
        r = metrics.sqrtm_psd(a)
        torch.testing.assert_close(r @ r, a)
        torch.testing.assert_close(r, r.T)
        assert torch.linalg.eigvalsh(r).min() > -1e-8


def test_frechet_of_a_set_with_itself_is_zero():
    f = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert metrics.fid_from_features(f, f) < 1e-8
    assert metrics.fid_from_features(f, f + 0.5) == pytest.approx(16 * 0.25, rel=1e-6)   # a shift adds |dmu|^2


def test_frechet_closed_forms():
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    d2 = metrics.frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-1.0]), torch.tensor([[9.0]]))
    assert d2 == pytest.approx(4 + 1)
    # diagonal covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 0.1, 0.5])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expect = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert metrics.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expect.item(), rel=1e-6)
    # general covariances: tr (C1 C2)^(1/2) = sum of the square roots of the eigenvalues of C1 C2
    c1, c2 = random_psd(5, 1), random_psd(5, 2)
    tr_sqrt = torch.linalg.eigvals(c1 @ c2).real.clamp(min=0).sqrt().sum()
    expect = (c1.trace() + c2.trace() - 2 * tr_sqrt).item()
    mu = torch.zeros(5)
    assert metrics.frechet_distance(mu, c1, mu, c2) == pytest.approx(expect, rel=1e-6)
    assert metrics.frechet_distance(mu, c1, mu, c2) == pytest.approx(metrics.frechet_distance(mu, c2, mu, c1), rel=1e-6)


def test_frechet_from_samples_of_known_gaussians():
    g = torch.Generator().manual_seed(0)
    c1, c2 = random_psd(3, 3), random_psd(3, 4)
    mu1, mu2 = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.5, 0.0, 0.0])
    n = 50_000
    f1 = mu1 + torch.randn(n, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(c1).T
    f2 = mu2 + torch.randn(n, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(c2).T
    exact = metrics.frechet_distance(mu1, c1, mu2, c2)
    assert metrics.fid_from_features(f1, f2) == pytest.approx(exact, rel=0.05)


# --------------------------------------------------------------------------- counts on hand-made inputs
def test_confident_histogram_accuracy():
    probs = torch.tensor([[0.95, 0.05, 0.0],      # class 0, confident
                          [0.2, 0.7, 0.1],        # class 1, not confident
                          [0.0, 0.0, 1.0],        # class 2, confident
                          [0.0, 0.9, 0.1]])       # class 1, confident (p >= 0.9 counts)
    assert metrics.confident_fraction(probs) == pytest.approx(0.75)
    assert metrics.confident_fraction(probs, threshold=0.99) == pytest.approx(0.25)
    assert metrics.class_histogram(probs) == [1, 2, 1]
    assert classifier.label_accuracy(probs, torch.tensor([0, 1, 1, 1])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="labels"):
        classifier.label_accuracy(probs, torch.tensor([0, 1]))


def test_random_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.full((64, 1, 28, 28), -1.0)
    x[:, :, 14, 14] = 1.0
    y = classifier_training.random_shift(x, 2, g)
    assert y.shape == x.shape and (y == 1).flatten(1).sum(1).eq(1).all()           # the pixel moved, kept
    pos = (y[:, 0] == 1).nonzero()[:, 1:]                                          # (row, col) per image
    assert (pos - 14).abs().max() == 2 and len({tuple(p) for p in pos.tolist()}) > 5
    assert set(y.unique().tolist()) == {-1.0, 1.0}                                  # background fill is -1
    assert torch.equal(classifier_training.random_shift(x, 0, g), x)


def test_evaluate_samples_keys_floor_and_errors():
    torch.manual_seed(0)
    clf = classifier.Classifier().eval()
    g = torch.Generator().manual_seed(0)
    real = torch.rand(60, 1, 28, 28, generator=g) * 2 - 1
    out = metrics.evaluate_samples(clf, real[:30], labels=torch.zeros(30, dtype=torch.long), real=real)
    assert out["n"] == 30 and len(out["histogram"]) == 10 and sum(out["histogram"]) == 30
    assert 0 <= out["confident"] <= 1 and 0 <= out["accuracy"] <= 1
    assert out["fid"] < 1e-8                                                       # the samples are real[:N]
    assert out["fid_floor"] > 0
    assert "fid" not in metrics.evaluate_samples(clf, real[:30])
    with pytest.raises(ValueError, match="2N"):
        metrics.evaluate_samples(clf, real[:40], real=real)
    broken = real[:5].clone()
    broken[2, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="1 of 5 samples"):
        metrics.evaluate_samples(clf, broken)


# --------------------------------------------------------------------------- the trained classifier
def test_test_profile_classifier_beats_chance(test_profile, tmp_path):
    cfg = classifier_training.classifier_config(test_profile)
    assert json.loads(json.dumps(cfg)) == cfg
    n_params = sum(p.numel() for p in classifier.Classifier().parameters())
    assert 50_000 < n_params < 150_000
    result = classifier_training.train_classifier(test_profile, out=tmp_path / "clf", progress=False)
    assert result.step == classifier_recipe(test_profile).steps
    clf = classifier.load_classifier(tmp_path / "clf", "cpu")
    acc = classifier_training.classifier_test_accuracy(clf, test_profile)
    assert acc > 0.8, f"test accuracy {acc:.3f}"                                    # chance is 0.1
    training = json.loads((tmp_path / "clf" / "training.json").read_text())
    assert training["test_accuracy"] == pytest.approx(acc, abs=1e-6)
    x = torch.zeros(2, 1, 28, 28)
    torch.testing.assert_close(clf(x), result.ema_model(x))                        # the saved model is the EMA
    with pytest.raises(ValueError, match="shape"):
        clf.features(torch.zeros(2, 28, 28))
