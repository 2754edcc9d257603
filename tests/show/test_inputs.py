"""The subject of a picture (:mod:`visionattn.show.inputs`): runs reloaded, untrained defaults, the image sources,
files fitted to the model's input, and the clear errors for bad input."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from tests.engine_support import register_tiny_models
from tests.igpt_support import tiny_config
from visionattn.data.fashion_mnist import CLASSES
from visionattn.errors import UsageError
from visionattn.models.pretrained import FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD
from visionattn.runs import load_classification_run
from visionattn.show.inputs import PHOTOS, build_subject, fit_images
from visionattn.show.registry import Picture
from visionattn.train import train

register_tiny_models()


def _draw(subject):  # never called here: build_subject does not draw
    raise AssertionError("drawn")


def picture(images: str = "fashion-mnist", default_model: str = "test_tiny", **kw) -> Picture:
    return Picture("testpic", "test picture", _draw, default_model, images, **kw)


def has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


BN_PICTURE = picture(default_model="test_tiny_bn", accepts=has_bn, needs="a BatchNorm layer")


def _unnormalise(subject, mean, std) -> torch.Tensor:
    """(B, H, W, C) pixels in [0, 1] from the normalised images."""
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (subject.images * s + m).permute(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------------- the runs
def test_a_run_is_reloaded_with_its_weights_classes_and_normalisation(run, fmnist):
    subject = build_subject(picture(), checkpoint=run, data_dir=fmnist, count=2)
    saved = load_file(str(run / "model.safetensors"))
    state = subject.model.state_dict()
    assert subject.trained and "untrained" not in subject.title("x") and not subject.model.training
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    normalize = json.loads((run / "config.json").read_text())["normalize"]
    assert normalize["mean"] != list(FASHION_MNIST_MEAN)  # the generated data's own statistics, as trained
    assert torch.allclose(_unnormalise(subject, normalize["mean"], normalize["std"]), subject.display[..., :1],
                          atol=1e-6)
    assert subject.class_names == CLASSES and str(run) in subject.source


def test_a_photo_picture_of_a_fashion_mnist_run_shows_its_test_images(run, fmnist, tmp_path):
    subject = build_subject(picture("photos"), checkpoint=run, data_dir=fmnist)
    assert subject.images.shape == (10, 1, 28, 28) and subject.labels.tolist() == list(range(10))
    assert "Fashion-MNIST test images (1 a class)" in subject.source
    assert build_subject(picture("photos"), checkpoint=run, data_dir=fmnist, count=2).labels.shape == (20,)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 30, 3), (200, 40, 10), np.uint8)).save(photo)
    subject = build_subject(picture("photos"), checkpoint=run, image=photo)  # a file: grey 28 x 28 as the model reads
    assert subject.images.shape == (1, 1, 28, 28) and subject.display.shape == (1, 28, 28, 3)
    assert torch.equal(subject.display[..., 0], subject.display[..., 2])


def test_load_classification_run_refuses_another_task_and_an_unfinished_run(run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "model.safetensors").unlink()
    with pytest.raises(UsageError, match=r"--checkpoint: .*unfinished; finish it with `visionattn train --resume"):
        load_classification_run(unfinished)
    config = json.loads((run / "config.json").read_text())
    (unfinished / "config.json").write_text(json.dumps({**config, "task": "next-pixel"}))
    with pytest.raises(UsageError, match=r"is a next-pixel run of 'test_tiny' \(made by `visionattn igpt train`\), "
                                         "not a classification run; needed the directory of a finished `visionattn "
                                         "train` run"):
        load_classification_run(unfinished)


def test_a_run_of_a_model_without_what_the_picture_shows_is_refused(run):
    with pytest.raises(UsageError, match=r"--checkpoint: .* is a run of test_tiny, which does not have a BatchNorm "
                                         r"layer \(what the testpic picture shows\)"):
        build_subject(BN_PICTURE, checkpoint=run)


def test_model_that_disagrees_with_the_run_is_refused(run):
    with pytest.raises(UsageError, match="--model: got 'test_tiny_bn', but the run in .* is of 'test_tiny'"):
        build_subject(picture(), checkpoint=run, model="test_tiny_bn")


def test_a_missing_run_directory_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--checkpoint: .*nope does not exist; needed the directory of a finished"):
        build_subject(picture(), checkpoint=tmp_path / "nope")


def test_an_image_gpt_run_gives_its_palette_and_images_in_0_1(fmnist, tmp_path):
    run_dir = tmp_path / "igpt"
    train(tiny_config(fmnist, run_dir, epochs=1, max_steps=1, model_args={"dim": 8, "depth": 1, "heads": 1}))
    subject = build_subject(picture(default_model="igpt_fashion"), checkpoint=run_dir, data_dir=fmnist, count=1)
    assert subject.trained and subject.model_name == "igpt_fashion"
    palette = subject.options["palette"]
    assert palette.levels == 16 and subject.images.shape == (10, 1, 28, 28)
    assert torch.equal(subject.images, subject.display[..., :1].permute(0, 3, 1, 2))
    assert palette.encode(subject.images).shape == (10, 784)


# ---------------------------------------------------------------------------------------- untrained models
def test_untrained_fashion_mnist_model_is_seeded_and_normalised_as_the_trainer_would(fmnist):
    first = build_subject(picture(), data_dir=fmnist, count=3)
    second = build_subject(picture(), model="test_tiny", data_dir=fmnist, count=3)
    assert not first.trained and first.title("x") == "x: test_tiny (untrained: random weights)"
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
    assert first.images.shape == (30, 1, 28, 28) and first.display.shape == (30, 28, 28, 3)
    assert first.labels.tolist() == [c for c in range(10) for _ in range(3)] and first.class_names == CLASSES
    assert torch.allclose(_unnormalise(first, FASHION_MNIST_MEAN, FASHION_MNIST_STD), first.display[..., :1],
                          atol=1e-6)
    assert first.model(first.images).shape == (30, 10)
    assert len(build_subject(picture(), data_dir=fmnist).images) == 40  # 20 a class by default; the data have 4


def test_untrained_photo_model_reads_224x224_rgb_with_imagenet_statistics():
    subject = build_subject(picture("photos"), count=2)
    assert subject.images.shape == (2, 3, 224, 224) and subject.display.shape == (2, 224, 224, 3)
    assert 0 <= subject.display.min() and subject.display.max() <= 1 and subject.display.std() > 0.1
    assert torch.allclose(_unnormalise(subject, IMAGENET_MEAN, IMAGENET_STD), subject.display, atol=1e-5)
    assert "astronaut, chelsea" in subject.source and subject.labels is None


def test_photographs_for_an_untrained_fashion_mnist_size_model_are_grey_28x28():
    subject = build_subject(picture("photos"), model="resnet20", count=1)  # made for 1x28x28
    assert subject.images.shape == (1, 1, 28, 28) and not subject.trained
    assert torch.allclose(_unnormalise(subject, FASHION_MNIST_MEAN, FASHION_MNIST_STD), subject.display[..., :1],
                          atol=1e-6)


def test_a_model_without_what_the_picture_shows_is_refused(fmnist):
    with pytest.raises(UsageError, match="--model: got test_tiny, which does not have a BatchNorm layer"):
        build_subject(BN_PICTURE, model="test_tiny", data_dir=fmnist)
    assert build_subject(BN_PICTURE, data_dir=fmnist, count=1).model_name == "test_tiny_bn"  # its default has one


def test_an_unknown_model_gets_did_you_mean():
    with pytest.raises(UsageError, match="--model: unknown model name 'test_tin'; did you mean 'test_tiny'"):
        build_subject(picture(), model="test_tin")


def test_missing_scikit_image_says_to_install_the_train_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(UsageError, match=r"need scikit-image.*install the 'train' extra with pip install "
                                         r"'visionattn\[train\]'"):
        build_subject(picture("photos"))


# ---------------------------------------------------------------------------------------------- the images
def test_fit_images_covers_then_crops_at_the_centre():
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[:, 10:30] = 200  # the centre half
    fitted = fit_images([rgb], (3, 10, 10))
    assert fitted.shape == (1, 3, 10, 10) and fitted.dtype == torch.uint8
    assert (fitted[0, :, :, 1:-1] == 200).all()  # the 20-pixel centre of the 20x40 image, scaled to 10
    grey = fit_images([np.full((4, 4, 3), (255, 0, 0), dtype=np.uint8)], (1, 4, 4))
    assert grey.shape == (1, 1, 4, 4) and (grey == 76).all()  # ITU-R 601-2 luma of pure red


def test_image_files_are_decoded_and_fitted(tmp_path):
    Image.fromarray(np.full((30, 50, 3), 90, dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8), 30, dtype=np.uint8)).save(tmp_path / "b.png")  # grey
    subject = build_subject(picture(), image=[tmp_path / "a.png", tmp_path / "b.png"])
    assert subject.images.shape == (2, 1, 28, 28) and subject.labels is None
    assert torch.allclose(subject.display[:, 0, 0, 0] * 255, torch.tensor([90.0, 30.0]))


@pytest.mark.bad_input
@pytest.mark.parametrize(("name", "content", "needs"), [
    ("missing.png", None, "which does not exist; needed an image file"),
    ("folder", "a folder", "a folder; needed an image file"),
    ("notes.png", b"not an image", "cannot read .*notes.png.* as an image"),
    ("cut.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "cannot read .*cut.png.* as an image"),
])
def test_bad_image_files_are_clear_errors_before_a_model_is_built(tmp_path, monkeypatch, name, content, needs):
    import visionattn.show.inputs as inputs

    path = tmp_path / name
    if content == "a folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "fine.png")
    monkeypatch.setattr(inputs, "_untrained", lambda *a: pytest.fail("a model was built"))
    with pytest.raises(UsageError, match=f"--image: .*{needs}"):
        build_subject(picture(), image=[tmp_path / "fine.png", path])  # every file is checked


@pytest.mark.bad_input
@pytest.mark.parametrize(("kwargs", "needs"), [
    ({"count": 5, "images": "photos"}, r"--count: got 5, needed 1 to 4 \(the sample photographs"),
    ({"count": 50, "data_dir": "FMNIST"}, "--count: got 50, needed at most 4"),
    ({"count": 2, "image": ["x.png"]}, "--count: got 2, but the --image files are shown"),
    ({"options": {"pixel": (28, 3)}, "data_dir": "FMNIST"},
     r"--pixel: got 28,3, needed Y,X inside the model's 28x28 input"),
    ({"image": ["x.png"], "images": "none"}, "--image: the testpic picture draws no images"),
    ({"model": "test_tiny", "default_model": ""}, "--model: the testpic picture draws no model"),
])
def test_arguments_that_do_not_fit_the_picture_are_refused(fmnist, kwargs, needs):
    kwargs = dict(kwargs)
    pic = picture(kwargs.pop("images", "fashion-mnist"), kwargs.pop("default_model", "test_tiny"))
    if kwargs.get("data_dir") == "FMNIST":
        kwargs["data_dir"] = fmnist
    with pytest.raises(UsageError, match=needs):
        build_subject(pic, **kwargs)


def test_the_photographs_are_the_four_samples_and_a_data_dir_is_not_needed_for_them(tmp_path):
    assert PHOTOS == ("astronaut", "chelsea", "coffee", "rocket")
    assert build_subject(picture("photos"), model="test_tiny", data_dir=tmp_path).images.shape[0] == 4


def test_a_picture_without_model_or_images_gets_an_empty_subject():
    subject = build_subject(picture("none", ""), options={"head": 1})
    assert subject.model is None and subject.images is None and subject.options == {"head": 1}
