"""The linear probe of Image GPT's features (Chen et al. 2020, sections 2.4 and 3.3): how well a linear classifier
reads the image's class from a layer's features, against the same classifier on the raw pixels.

Features: f^l = mean over positions of n^l = layer_norm(h^l), the hidden states after block l normalised without
learned parameters and average-pooled over the sequence (the paper's f^l; :meth:`ImageGPT.features` with
``normalize=True``), for a middle layer by default (the paper finds the best features in the middle of the
network). Pixels: the 8-bit images / 255, flattened.

Classifier: multinomial logistic regression with an L2 penalty on the weights (not the intercepts), on features
standardised by the training set's mean and standard deviation, fitted by L-BFGS in float64 to the minimum of

    sum_i CE(W x_i + b, y_i) + l2 / 2 ||W||^2

which is scikit-learn's ``LogisticRegression(C=1 / l2)`` objective (the project does not depend on scikit-learn at
run time; the tests compare the two). The same classifier and settings are fitted to both inputs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from visionattn.errors import UsageError
from visionattn.runlog import json_safe

if TYPE_CHECKING:
    from torch import nn

    from visionattn.igpt_task import IGPTRun

__all__ = ["LinearClassifier", "fit_logistic_regression", "standardize", "pooled_features", "probe_accuracy",
           "run_probe"]


class LinearClassifier:
    """``weight`` (d, K) and ``bias`` (K,) of a fitted multinomial logistic regression (float64).

    Shape:
        - predict: (N, d) -> (N,) long
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight, self.bias = weight, bias

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(1)


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1.0,
                            max_iter: int = 500, tol: float = 1e-10) -> LinearClassifier:
    """Minimise sum_i CE(W x_i + b, y_i) + l2 / 2 ||W||^2 by L-BFGS (strong Wolfe line search), from zero.

    The objective is divided by N for the optimizer (the same minimum, gradients of order one).

    Shape:
        - Input: x (N, d), y (N,) long in [0, num_classes)
    """
    x, y = x.double(), y.long()
    n = x.shape[0]
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                                  tolerance_change=tol * 1e-3, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (F.cross_entropy(x @ weight + bias, y, reduction="sum") + 0.5 * l2 * weight.square().sum()) / n
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearClassifier(weight.detach(), bias.detach())


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``train`` and ``others`` minus the training mean, over the training standard deviation (1 where it is 0)."""
    train = train.double()
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [(t.double() - mean) / std for t in (train, *others)]


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   num_classes: int, l2: float = 1.0, max_iter: int = 500) -> float:
    """Test accuracy of the classifier fitted on standardised ``train_x``."""
    train_z, test_z = standardize(train_x, test_x)
    classifier = fit_logistic_regression(train_z, train_y, num_classes, l2, max_iter)
    return float((classifier.predict(test_z) == test_y).double().mean())


@torch.no_grad()
def pooled_features(model: nn.Module, tokens: torch.Tensor, layer: int, batch_size: int = 200) -> torch.Tensor:
    """f^layer: the normalised hidden states after block ``layer``, averaged over positions.

    Shape:
        - Input: tokens (N, L)
        - Output: (N, dim) float64
    """
    model.eval()
    parts = [model.features(part.long(), layer, normalize=True).double().mean(1) for part in tokens.split(batch_size)]
    return torch.cat(parts)


def _probe_data(run: IGPTRun, train_subset: int | None, data_dir: str | None) -> Any:
    from visionattn.data import load_dataset

    cfg = run.cfg
    data = load_dataset(cfg.data, data_dir=data_dir or cfg.data_dir, image_size=cfg.image_size,
                        channels=cfg.channels, val_fraction=cfg.val_fraction, seed=cfg.seed)
    subset = train_subset or cfg.train_subset
    if subset:
        data.train = data.train.balanced_subset(subset, argument="--train-subset")
    return data


def run_probe(run: IGPTRun, layer: int | None = None, train_subset: int | None = None, l2: float = 1.0,
              max_iter: int = 500, batch_size: int = 200, data_dir: str | None = None) -> dict[str, Any]:
    """Probe ``run``'s layer ``layer`` (default: depth // 2) against the raw pixels on its data's test split;
    writes ``probe.json`` into the run's directory and returns its content."""
    from visionattn.igpt_task import encode_images

    depth = run.model.depth
    layer = max(1, depth // 2) if layer is None else layer
    if not 0 <= layer <= depth:
        raise UsageError(f"--layer: got {layer}, needed 0 to {depth} (the run's model has {depth} blocks; 0 is the "
                         "embedded input)")
    data = _probe_data(run, train_subset, data_dir)
    splits = {name: getattr(data, name) for name in ("train", "test")}
    feats = {name: pooled_features(run.model, encode_images(run.palette, split.images), layer, batch_size)
             for name, split in splits.items()}
    pixels = {name: split.images.flatten(1).double() / 255 for name, split in splits.items()}
    labels = {name: split.labels for name, split in splits.items()}
    k = data.num_classes
    feature_acc = probe_accuracy(feats["train"], labels["train"], feats["test"], labels["test"], k, l2, max_iter)
    pixel_acc = probe_accuracy(pixels["train"], labels["train"], pixels["test"], labels["test"], k, l2, max_iter)
    beat = feature_acc > pixel_acc
    verdict = (f"The average-pooled features of layer {layer} (of {depth}) {'beat' if beat else 'do not beat'} the "
               f"raw pixels: {100 * feature_acc:.2f}% against {100 * pixel_acc:.2f}% test accuracy of the same "
               f"logistic regression (l2 {l2:g}) on {data.name}.")
    result = {"layer": layer, "depth": depth, "feature_dim": feats["train"].shape[1],
              "pixel_dim": pixels["train"].shape[1], "features_test_acc": feature_acc, "pixels_test_acc": pixel_acc,
              "features_beat_pixels": beat, "l2": l2, "max_iter": max_iter, "train_images": len(data.train),
              "test_images": len(data.test), "data": data.name, "verdict": verdict}
    from visionattn.checkpoint import atomic_write

    atomic_write(run.folder / "probe.json", (json.dumps(json_safe(result), indent=2) + "\n").encode())
    return result
