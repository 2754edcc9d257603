"""The linear probe: the L-BFGS logistic regression equals scikit-learn's, and ``visionattn igpt probe`` reports
a layer's features against the raw pixels in probe.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.engine_support import make_fashion_mnist
from tests.igpt_support import tiny_config
from visionattn.cli import main
from visionattn.igpt_task import encode_images, load_run
from visionattn.probe import fit_logistic_regression, pooled_features, probe_accuracy, standardize
from visionattn.train import train


def _blobs(n: int = 150, d: int = 4, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 1.5 * torch.randn(k, d, generator=g,
                                                                                 dtype=torch.float64)[y]
    return x, y


@pytest.mark.parametrize("l2", [1.0, 0.1])
def test_logistic_regression_equals_scikit_learns(l2):
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs()
    ours = fit_logistic_regression(x, y, 3, l2=l2)
    theirs = LogisticRegression(C=1 / l2, tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
    torch.testing.assert_close(ours.weight.T, torch.from_numpy(theirs.coef_), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.logits(x).softmax(1), torch.from_numpy(theirs.predict_proba(x.numpy())),
                               rtol=0, atol=1e-6)


def test_standardize_uses_the_training_statistics():
    train_x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    test_x = torch.tensor([[2.0, 6.0]])
    train_z, test_z = standardize(train_x, test_x)
    assert torch.allclose(train_z, torch.tensor([[-2 ** -0.5, 0.0], [2 ** -0.5, 0.0]], dtype=torch.float64))
    assert torch.allclose(test_z, torch.tensor([[0.0, 1.0]], dtype=torch.float64))  # a constant column: std 1


def test_separable_classes_are_read_perfectly():
    x, y = _blobs(seed=1)
    x[:, 0] += 10 * y  # the classes far apart along one axis
    assert probe_accuracy(x[:90], y[:90], x[90:], y[90:], 3) == 1.0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    data = make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=16)
    folder = tmp_path_factory.mktemp("igpt") / "run"
    train(tiny_config(data, folder, epochs=1))
    return folder


def test_pooled_features_are_the_normalised_hidden_states_averaged_over_positions(run):
    loaded = load_run(run)
    tokens = torch.randint(0, 16, (3, 784), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = loaded.model.features(tokens, 1)
    normed = (hidden - hidden.mean(-1, keepdim=True)) / (hidden.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(pooled_features(loaded.model, tokens, 1, batch_size=2), normed.double().mean(1),
                               rtol=1e-5, atol=1e-6)


def test_the_probe_writes_both_accuracies_and_says_which_is_better(run, capsys):
    assert main(["igpt", "probe", "--checkpoint", str(run), "--layer", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "probe.json").read_text())
    assert result["layer"] == 1 and result["feature_dim"] == 16 and result["pixel_dim"] == 784
    assert (result["train_images"], result["test_images"]) == (64, 16)
    for key in ("features_test_acc", "pixels_test_acc"):
        assert 0.0 <= result[key] <= 1.0 and (result[key] * 16).is_integer()
    beat = result["features_test_acc"] > result["pixels_test_acc"]
    assert result["features_beat_pixels"] is beat
    assert result["verdict"] in out and ("features of layer 1 (of 2) beat" in result["verdict"]) is beat
    # the pixels' figure is the classifier on the raw images
    loaded = load_run(run)
    from visionattn.data import load_fashion_mnist

    data = load_fashion_mnist(loaded.cfg.data_dir)
    want = probe_accuracy(data.train.images.flatten(1) / 255, data.train.labels, data.test.images.flatten(1) / 255,
                          data.test.labels, 10)
    assert result["pixels_test_acc"] == want
    feats = pooled_features(loaded.model, encode_images(loaded.palette, data.train.images), 1)
    assert feats.shape == (64, 16)
