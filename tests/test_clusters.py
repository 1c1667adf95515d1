"""k-means clusters: the free hint the unconditional denoiser is trained and guided with."""
import json

import pytest
import torch

from course_lib.data.clusters import draw_clusters, kmeans
from course_lib.networks import unet
from course_lib.training import denoiser
from course_lib.training.denoiser import recipe_config as denoiser_recipe


def blobs(seed=0):
    """Three tight, far-apart blobs of 30, 50 and 20 points in 5-D, in shuffled order."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[10.0] * 5, [-10.0] * 5, [10.0, -10.0, 10.0, -10.0, 10.0]])
    truth = torch.cat([torch.full((n,), i) for i, n in enumerate((30, 50, 20))])
    order = torch.randperm(100, generator=g)
    truth = truth[order]
    return centres[truth] + 0.1 * torch.randn(100, 5, generator=g), truth, centres


def test_kmeans_recovers_separated_groups_and_their_means():
    x, truth, centres = blobs()
    found = kmeans(x, 3, seed=1)
    for c in range(3):                                      # every cluster is exactly one blob
        members = truth[found.assign == c]
        assert len(members) > 0 and (members == members[0]).all()
        assert torch.allclose(found.centroids[c], x[found.assign == c].mean(0), atol=1e-5)
        assert torch.allclose(found.centroids[c], centres[members[0]], atol=0.1)
    assert sorted(found.sizes.tolist()) == [20, 30, 50] and found.sizes.sum() == 100


def test_kmeans_keeps_the_image_shape_is_seeded_and_checks_k():
    x = torch.rand(40, 1, 4, 4)
    a, b = kmeans(x, 5, seed=3), kmeans(x, 5, seed=3)
    assert a.centroids.shape == (5, 1, 4, 4) and a.assign.shape == (40,)
    assert torch.equal(a.assign, b.assign) and torch.equal(a.centroids, b.centroids)
    # Lloyd's fixed point: each image is nearest to its own cluster's mean
    d = torch.cdist(x.flatten(1), a.centroids.flatten(1))
    assert torch.equal(d.argmin(1), a.assign)
    for k in (0, 41):
        with pytest.raises(ValueError, match="k must be between 1 and the number of images"):
            kmeans(x, k)


def test_draw_clusters_follows_the_cluster_sizes():
    c = draw_clusters([0, 100, 300], 8000, torch.Generator().manual_seed(0))
    counts = torch.bincount(c, minlength=3)
    assert c.dtype == torch.long and counts[0] == 0
    assert 0.72 < counts[2] / 8000 < 0.78                     # p = 0.75
    same = draw_clusters(torch.tensor([0, 100, 300]), 50, torch.Generator().manual_seed(0))
    assert torch.equal(same, c[:50])
    for bad in ([], [0, 0], [1, -1]):
        with pytest.raises(ValueError, match="sizes must be"):
            draw_clusters(bad, 3)


def test_the_denoiser_is_trained_on_clusters_and_loads_their_sizes(test_profile, tmp_path):
    prof = test_profile.with_recipe("denoiser", steps=3)
    result = denoiser.train_denoiser(prof, out=tmp_path / "d", progress=False)
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["num_classes"] == denoiser_recipe(prof).clusters and cfg["clusters"] and cfg["p_uncond"] == prof.p_uncond
    training = json.loads((tmp_path / "d" / "training.json").read_text())
    assert len(training["cluster_sizes"]) == denoiser_recipe(prof).clusters
    assert sum(training["cluster_sizes"]) == prof.n_train                 # every training image has a cluster
    model, _ = unet.load_unet(tmp_path / "d")
    assert model.cluster_sizes.tolist() == training["cluster_sizes"]
    assert torch.equal(result.ema_model.cluster_sizes, model.cluster_sizes)
    x, t = torch.randn(4, 1, 28, 28), torch.full((4,), 500)
    with torch.no_grad():                                   # the cluster changes the prediction
        assert not torch.equal(model(x, t, torch.tensor([0, 1, 2, 3])), model(x, t, None))


def test_a_resume_that_finds_other_clusters_is_refused(test_profile, tmp_path, monkeypatch):
    prof = test_profile.with_recipe("denoiser", steps=4)
    denoiser.train_denoiser(prof, out=tmp_path / "d", progress=False, stop_after=2)
    real_kmeans = denoiser.kmeans
    monkeypatch.setattr(denoiser, "kmeans", lambda x, k, seed=0: real_kmeans(x, k, seed=seed + 1))
    with pytest.raises(ValueError, match="k-means clusters computed here differ"):
        denoiser.train_denoiser(prof, out=tmp_path / "d", progress=False)
    monkeypatch.setattr(denoiser, "kmeans", real_kmeans)                 # the same clusters: it resumes
    assert denoiser.train_denoiser(prof, out=tmp_path / "d", progress=False).step == 4


def test_training_into_another_configs_folder_names_the_config_not_the_clusters(test_profile, tmp_path):
    prof = test_profile.with_recipe("denoiser", steps=4)
    denoiser.train_denoiser(prof, out=tmp_path / "d", progress=False, stop_after=2)
    other = prof.with_recipe("denoiser", clusters=denoiser_recipe(prof).clusters + 1)      # another profile's denoiser
    with pytest.raises(ValueError, match="another model config .*num_classes"):
        denoiser.train_denoiser(other, out=tmp_path / "d", progress=False)
