import shutil
import socket
import time

import pytest
import torch

from course_lib import paths
from course_lib.data import mnist


def test_train_and_test_splits(capsys):
    x, y = mnist.load_mnist("test", n=500)
    assert x.shape == (500, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (500,) and y.dtype == torch.int64
    assert x.min() == -1 and x.max() == 1
    assert y[:5].tolist() == [7, 2, 1, 0, 4]               # the known first test labels
    assert "500 of 10,000" in capsys.readouterr().out


def test_full_train_statistics():
    x, y = mnist.load_mnist("train", quiet=True)
    assert x.shape[0] == 60_000 and y[:5].tolist() == [5, 0, 4, 1, 9]
    pix = (x + 1) / 2
    assert abs(pix.mean().item() - 0.1307) < 1e-3 and abs(pix.std().item() - 0.3081) < 1e-3
    assert torch.bincount(y).min() > 5000


def test_profile_decides_the_size(test_profile):
    x, y = mnist.load_mnist("train", profile=test_profile, quiet=True)
    assert len(x) == test_profile.n_train


def test_checksums_match():
    mnist.verify_checksums()


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="split"):
        mnist.load_mnist("validation")
    with pytest.raises(ValueError, match="n must be"):
        mnist.load_mnist("test", n=10**6)


def test_offline_load_is_fast_and_reports_source(monkeypatch, capsys):
    def no_network(*a, **k):
        raise OSError("network unreachable (test)")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    t0 = time.perf_counter()
    mnist.load_mnist("test", n=10)
    assert time.perf_counter() - t0 < 5
    assert "via" in capsys.readouterr().out


def test_missing_files_fail_fast_with_advice(tmp_path, monkeypatch):
    fake_root = tmp_path / "course"
    (fake_root / "course_lib").mkdir(parents=True)
    (fake_root / "data").mkdir()
    monkeypatch.setenv("COURSE_ROOT", str(fake_root))
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        mnist.load_mnist("train")
    assert time.perf_counter() - t0 < 10
    assert "git checkout -- data/MNIST" in str(e.value)


def test_paths_do_not_depend_on_cwd(tmp_path, monkeypatch):
    root = paths.root()
    monkeypatch.chdir(tmp_path)
    assert paths.root() == root and paths.mnist_dir() == root / "data" / "MNIST" / "raw"


def test_model_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="Looked in"):
        paths.find_model("nonexistent-model")
    user = tmp_path / "home" / "nonexistent-model"
    user.mkdir(parents=True)
    (user / "config.json").write_text("{}")
    assert paths.find_model("nonexistent-model") == user
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    (explicit / "config.json").write_text("{}")
    assert paths.find_model("nonexistent-model", explicit) == explicit


def test_batch_indices_are_reproducible():
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = mnist.batch_indices(100, 10, g1), mnist.batch_indices(100, 10, g2)
    assert torch.equal(a, b) and len(set(a.tolist())) == 10


def test_torchvision_path_finds_all_four_files_it_wants(tmp_path, monkeypatch, capsys):
    """Where torchvision imports (Colab, a GPU machine), load_mnist reads through torchvision.datasets.MNIST,
    which refuses to load either split unless all four decompressed IDX files exist (its _check_exists).
    A fake torchvision with that rule stands in for the real one, which does not import here."""
    import sys
    import types
    raw = tmp_path / "course" / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (tmp_path / "course" / "course_lib").mkdir()
    for gz in (*mnist.FILES["train"], *mnist.FILES["test"]):
        shutil.copy(paths.mnist_dir() / gz, raw / gz)           # what a clone holds: the .gz files only
    monkeypatch.setenv("COURSE_ROOT", str(tmp_path / "course"))

    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            folder = tmp_path / "course" / "data" / "MNIST" / "raw"
            assert root == str(folder.parent.parent)
            if not all((folder / gz[:-3]).is_file() for gz in (*mnist.FILES["train"], *mnist.FILES["test"])):
                raise RuntimeError("Dataset not found. You can use download=True to download it")
            img, lab = mnist.FILES["train" if train else "test"]
            self.data = torch.from_numpy(mnist._read_idx(folder / img).copy())        # same bytes
            self.targets = torch.from_numpy(mnist._read_idx(folder / lab).copy())

    tv = types.ModuleType("torchvision")
    tv.datasets = types.ModuleType("torchvision.datasets")
    tv.datasets.MNIST = FakeMNIST
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tv.datasets)
    x, y = mnist.load_mnist("train", n=100, source="torchvision")
    assert "via torchvision.datasets.MNIST" in capsys.readouterr().out
    x_np, y_np = mnist.load_mnist("train", n=100, source="numpy", quiet=True)
    assert torch.equal(x, x_np) and torch.equal(y, y_np)
