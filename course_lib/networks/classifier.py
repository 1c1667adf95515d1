"""The course classifier: a small convnet that reads digits, and what every measure reads them with.

    ClassifierConfig, Classifier   the network (two conv blocks, a penultimate feature layer, 10 logits)
    load_classifier                from a model folder (``store``)
    classify                       probabilities and penultimate features for images in [-1, 1]
    label_accuracy                 how often the most likely class is the intended label

Its training run is ``training/classifier.py``; the numbers built on it are ``measures/metrics.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .. import store
from ..config import inference_autocast

__all__ = ["ClassifierConfig", "Classifier", "load_classifier", "classify", "label_accuracy"]


                         # for MNIST); generated digits are not always centred like MNIST's


# --------------------------------------------------------------------------- the classifier
@dataclass
class ClassifierConfig:
    channels: tuple[int, ...] = (16, 32, 64)   # conv widths at 28x28, 14x14 and 7x7
    features: int = 64                         # width of the penultimate layer (the FID features)
    num_classes: int = 10
    kind: str = "classifier"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        fields = cls.__dataclass_fields__
        d = {k: v for k, v in d.items() if k in fields and k != "kind"}
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class Classifier(nn.Module):
    """Three conv layers and two linear ones (61k parameters with the default config):

        x (B,1,28,28) -> conv5x5 -> ReLU -> maxpool  (B,c0,14,14)
                      -> conv3x3 -> ReLU -> maxpool  (B,c1,7,7)
                      -> conv3x3 -> ReLU -> maxpool  (B,c2,3,3)
                      -> flatten -> linear -> ReLU   (B,features)   <- ``features(x)``, used for FID
                      -> linear                      (B,10)         <- logits
    """

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config or ClassifierConfig()
        c0, c1, c2 = self.config.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c0, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c0, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * 3 * 3, self.config.features), nn.ReLU())
        self.head = nn.Linear(self.config.features, self.config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: (B, 1, 28, 28) in [-1, 1] -> (B, features)."""
        if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected images of shape (B, 1, 28, 28), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))                               # (B, 10) logits


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """Load a classifier checkpoint folder (``config.json`` + ``model.safetensors``), in eval mode."""
    path = Path(path)
    cfg = store.read_config(path, "classifier", "the course classifier", "data/weights/classifier",
                                  needs=("channels",))
    model = Classifier(ClassifierConfig.from_dict(cfg))
    store.load_weights(model, path, device=device)
    return model.eval()


# --------------------------------------------------------------------------- classifying
@torch.no_grad()
def classify(clf: Classifier, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and penultimate features of images, in batches, on the classifier's device.

    Args: x: (N, 1, 28, 28) in [-1, 1]. Returns: probs (N, 10) and features (N, F), float32 on the CPU.
    """
    if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected images of shape (N, 1, 28, 28), got {tuple(x.shape)}")
    if x.numel() and float(x.min()) >= 0 and float(x.max()) > 2:
        raise ValueError(f"images must be in [-1, 1] (background -1), but these are in [{float(x.min()):g}, "
                         f"{float(x.max()):g}]: pixels in 0..255? map them with x / 127.5 - 1")
    device = next(clf.parameters()).device
    probs, feats = [], []
    for chunk in x.split(batch_size):
        with inference_autocast(device):                           # fp16 on a T4, fp32 on a CPU
            f = clf.features(chunk.to(device).float())
            logits = clf.head(f)
        probs.append(logits.float().softmax(dim=1).cpu())
        feats.append(f.float().cpu())
    return torch.cat(probs), torch.cat(feats)


def label_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of rows whose most likely class is the intended label. labels: (N,) long."""
    labels = torch.as_tensor(labels).flatten().cpu()
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(f"got {labels.shape[0]} labels for {probs.shape[0]} samples")
    return (probs.argmax(dim=1) == labels).float().mean().item()
