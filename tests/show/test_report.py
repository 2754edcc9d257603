"""The main job's report: its HTML (sections, embedded images, escaping, untrained label, what the spread allows),
the verdict rule, the speed table, the command, and the page rendered in a real headless browser."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

import visionattn.compare as compare
from tests.engine_support import make_fashion_mnist, register_tiny_models
from visionattn import cli
from visionattn.errors import UsageError
from visionattn.show import report
from visionattn.show.registry import Picture, Subject
from visionattn.show.speed import REFERENCE, SpeedTable, machine_name, measure_layer_speed, model_layers

register_tiny_models()

_PNG = b"\x89PNG\r\n\x1a\n"
_SECTIONS = ("recipe", "comparison", "plots", "pictures", "speed")
_RECIPE = {"data": "fashion-mnist", "train_subset": 64, "epochs": 1, "optimizer": "sgd", "lr": 0.1,
           "batch_size": 16, "precision": "fp32", "data_dir": None}


def _row(model: str, accs: list[float]) -> dict:
    cost = {"params": 1000, "macs": 2_000_000, "attn_macs": 0, "train_img_s": 100.0, "latency_ms": 1.5,
            "peak_train_mb": 10.0}
    return compare.summarise(model, [{"test_acc": a / 100, "epochs": 1, "device": "cpu"} for a in accs], cost)


def _draw(subject: Subject):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow([[0.0, 1.0], [1.0, 0.0]], cmap="viridis")
    ax.set_title(subject.title("test gate"))
    return fig


_PICTURE = Picture("test_report_gate", "a stand-in gate <map> & weights", _draw, "test_tiny")


def _comparison(folder: Path, accs: dict[str, list[float]]) -> tuple[dict, list[dict]]:
    """A comparison folder as ``visionattn compare`` leaves it, from stand-in rows (no training): plots included."""
    rows = [_row(model, a) for model, a in accs.items()]
    folder.mkdir(parents=True, exist_ok=True)
    compare.write_outputs(rows, folder, rows[0]["model"])
    seeds = list(range(len(next(iter(accs.values())))))
    return {"models": list(accs), "seeds": seeds, "recipe": _RECIPE}, rows


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("report") / "cmp"
    plan, rows = _comparison(folder, {"plain": [70.0, 71.0], "gated<b>": [70.5, 72.0]})
    shots = [report.Shot(_PICTURE, Subject(None, "gated<b>", True, source="runs/<script>alert(1)</script>")),
             report.Shot(_PICTURE, Subject(None, "gated<b>", False, source="random"))]
    speed = SpeedTable([{"layer": REFERENCE, "model": "", "params": 9, "forward_ms": 1.0, "train_ms": 3.0},
                        {"layer": "se", "model": "gated<b>", "params": 5, "forward_ms": 0.2, "train_ms": 0.7}],
                       (8, 6, 6), 4, 3, 1, "Test CPU <x86>, 2 cores")
    path = report.write_report(folder, plan=plan, rows=rows, shots=shots, speed=speed)
    return path, path.read_text(encoding="utf-8")


def _images(text: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', text)


def test_report_has_every_section_and_embeds_every_image(page):
    path, text = page
    assert path.name == "report.html" and text.startswith("<!DOCTYPE html>")
    for anchor in _SECTIONS:
        assert f'<section id="{anchor}">' in text, anchor
        assert re.search(rf'<section id="{anchor}"><h2>[^<]+</h2><p class="what">[^<]+\.</p>', text), anchor
    images = _images(text)
    assert len(images) == len(report.PLOTS) + 2  # the three plots and the two pictures
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(_PNG)
    assert "<script" not in text and "http://" not in text and "https://" not in text and "url(" not in text


def test_report_escapes_text_and_labels_an_untrained_picture(page):
    _, text = page
    assert "<b>" not in text and "gated&lt;b&gt;" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "Test CPU &lt;x86&gt;" in text
    assert "a stand-in gate &lt;map&gt; &amp; weights" in text
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    picture_captions = [c for c in captions if "stand-in gate" in c]
    assert len(picture_captions) == 2
    assert "untrained" not in picture_captions[0] and "untrained: random weights" in picture_captions[1]


def test_report_shows_the_seeds_and_says_what_their_spread_allows(page):
    _, text = page
    assert "70.00, 71.00" in text and "70.50 ± 0.71" in text  # each seed, mean ± sd
    assert "within the seed-to-seed spread" in text and "one seed" not in text.lower()
    assert "helped" not in text.split('<p class="verdict">')[1].split("</p>")[0]


def test_spread_sentence_for_one_seed_and_for_a_separated_model(tmp_path):
    plan, rows = _comparison(tmp_path / "one", {"plain": [70.0], "gated": [75.0]})
    text = report.write_report(tmp_path / "one", plan=plan, rows=rows).read_text()
    assert "One seed per model: there is no spread" in text and "one seed, no spread to judge it by" in text
    assert '<section id="speed">' not in text  # no speed table given
    plan, rows = _comparison(tmp_path / "two", {"plain": [70.0, 70.5], "gated": [73.0, 73.2], "flat": [70, 71]})
    text = report.write_report(tmp_path / "two", plan=plan, rows=rows).read_text()
    assert "Beyond the spread in every one of the 2 seeds: gated (helped)" in text
    assert "33% of the time with 2 seeds" in text  # 2 / C(4, 2): one pair above the other by chance


def test_verdict_needs_the_change_beyond_the_spread_and_every_seed_beyond():
    base = _row("plain", [70.0, 74.0])
    assert compare.verdict(_row("a", [74.5, 75.5]), base) == "helped"
    assert compare.verdict(_row("b", [66.0, 69.0]), base) == "hurt"
    # the mean moved by more than the larger sd (3.25 > 3.18), but a seed of "c" lies below one of the base
    assert compare.verdict(_row("c", [73.0, 77.5]), base) == "within the spread"
    assert compare.verdict(_row("d", [80.0]), _row("plain", [70.0])) == "one seed, no spread to judge it by"


def test_a_picture_that_fails_is_named_on_the_page_and_a_wrong_baseline_is_refused(tmp_path):
    def broken(subject: Subject):
        raise RuntimeError("no <gate> recorded")

    plan, rows = _comparison(tmp_path / "cmp", {"plain": [70.0, 71.0], "gated": [70.5, 72.0]})
    shot = report.Shot(Picture("test_report_broken", "a broken picture", broken, "test_tiny"),
                       Subject(None, "gated", True))
    text = report.write_report(tmp_path / "cmp", plan=plan, rows=rows, shots=[shot]).read_text()
    assert "could not be drawn (RuntimeError: no &lt;gate&gt; recorded)" in text
    assert len(_images(text)) == len(report.PLOTS)
    with pytest.raises(UsageError, match=r"^baseline: got 'plian', needed one of 'plain', 'gated'"):
        report.write_report(tmp_path / "cmp", plan=plan, rows=rows, baseline="plian")


def test_report_reads_the_comparison_folder_and_refuses_one_without(tmp_path):
    with pytest.raises(UsageError, match=r"^out: .*holds no finished comparison.*plan\.json"):
        report.write_report(tmp_path)
    assert cli.main(["report", "--out", str(tmp_path / "missing")]) == 2


def test_speed_table_times_each_compared_layer_beside_a_convolution():
    assert model_layers(["resnet20", "se_resnet20", "sk_resnet20"]) == {
        "se_resnet20": ("se", {"rd_ratio": 0.25}), "sk_resnet20": ("sk", {})}
    table = measure_layer_speed(["resnet20", "se_resnet20"], shape=(8, 6, 6), batch=2, reps=1)
    assert [r["layer"] for r in table.rows] == [REFERENCE, "se"] and table.rows[1]["model"] == "se_resnet20"
    assert table.rows[0]["params"] == 8 * 8 * 9 and all(r["forward_ms"] > 0 and r["train_ms"] > 0 for r in table.rows)
    assert table.shape == (8, 6, 6) and table.batch == 2 and "cores" in machine_name()
    with pytest.raises(UsageError, match="models"):
        model_layers(["no_such_model"])


def test_pictures_are_chosen_by_what_each_model_has():
    chosen = report.choose_pictures(["resnet20", "se_resnet20", "sk_resnet20"])
    assert [(model, picture.name) for model, picture in chosen] == [("se_resnet20", "se"), ("sk_resnet20", "sk")]
    assert len(report.choose_pictures(["se_resnet20", "sk_resnet20"], limit=1)) == 1


def test_report_command_on_a_trained_comparison(tmp_path, capsys):
    data = make_fashion_mnist(tmp_path / "fmnist", n_train=64, n_test=20)
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--models", "test_tiny,test_tiny_bn", "--seeds", "0,1", "--data-dir", str(data),
                     "--epochs", "1", "--batch-size", "32", "--threads", "1", "--no-progress", "--cost-batch", "4",
                     "--out", str(out)]) == 0
    assert cli.main(["report", "--out", str(out)]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    text = (out / "report.html").read_text()
    assert "test_tiny_bn" in text and len(_images(text)) == len(report.PLOTS)
    assert "No compared model has a layer that a picture shows" in text and REFERENCE in text


# ------------------------------------------------------------------------------------- in a real browser
_CHECK = ("<script>addEventListener('load', () => { const imgs = [...document.images]; "
          "document.body.dataset.images = imgs.length; "
          "document.body.dataset.loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length; "
          "document.body.dataset.text = document.body.innerText.trim().length; });</script>")


@pytest.mark.skipif(report.find_browser() is None, reason="no chromium on PATH (Debian: apt-get install chromium; "
                                                          "make test installs it where apt is available and root)")
def test_report_renders_in_a_headless_browser(page, tmp_path):
    from PIL import Image, ImageStat

    path, text = page
    probe = tmp_path / "probe.html"  # the report plus a script that records what the browser loaded
    probe.write_text(text.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    dom = report.run_browser("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = dict(re.findall(r'data-(images|loaded|text)="(\d+)"', dom))
    assert found.get("images") == str(len(_images(text))) == found.get("loaded"), found
    assert int(found["text"]) > 500
    shot = report.screenshot(path, tmp_path / "shot.png", size=(1000, 1600))
    grey = Image.open(shot).convert("L")
    assert grey.size == (1000, 1600)
    assert ImageStat.Stat(grey).stddev[0] > 10  # not one blank colour
    dark = sum(n for value, n in enumerate(grey.histogram()) if value < 128)
    assert dark > 0.005 * grey.size[0] * grey.size[1]  # text and plots, not an empty page
