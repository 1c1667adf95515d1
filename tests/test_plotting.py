import matplotlib
import numpy as np
import pytest
import torch

from course_lib import plotting


def test_grid_shape_and_range():
    x = torch.linspace(-1, 1, 5 * 28 * 28).view(5, 1, 28, 28)
    g = plotting.image_grid(x, nrow=3, pad=1)
    assert g.shape == (2 * 29 + 1, 3 * 29 + 1)
    assert g.min() >= 0 and g.max() <= 1


def test_wrong_image_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="expected images"):
        plotting.image_grid(torch.zeros(2, 5, 28, 28))


def test_save_grid_writes_png(tmp_path):
    p = plotting.save_grid(torch.zeros(4, 1, 28, 28), tmp_path / "g.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_subsample_keeps_ends():
    assert plotting.subsample_frames(list(range(100)), 5) == [0, 25, 50, 74, 99]
    assert plotting.subsample_frames([1, 2], 5) == [1, 2]


def test_animation_is_static_under_test_profile_and_html_otherwise(monkeypatch):
    frames = [torch.randn(4, 1, 28, 28) for _ in range(12)]
    monkeypatch.setenv("COURSE_PROFILE", "test")
    fig = plotting.animate(frames, [f"t={i}" for i in range(12)])
    assert isinstance(fig, matplotlib.figure.Figure)
    html = plotting.animate(frames, max_frames=4, static=False)
    assert "<script" in html.data and html.data.count("data:image/png") == 4
