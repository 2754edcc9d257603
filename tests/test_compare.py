"""`visionattn compare`: training every model with one recipe, the table, the plots, and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import visionattn.compare as compare
from tests.engine_support import make_digit_folder, make_fashion_mnist, register_tiny_models
from visionattn import cli
from visionattn.errors import UsageError
from visionattn.recipe import TrainConfig

register_tiny_models()


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=40)


def _base(fmnist: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"data_dir": str(fmnist), "epochs": 1, "batch_size": 32, "threads": 1, "progress": False,
                          **kw})


def test_comparison_table_plots_and_resume(fmnist, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    rows = compare.run_comparison(["test_tiny", "test_tiny_bn"], [1, 2], _base(fmnist), out, cost_batch=8,
                                  log=lambda msg: None)
    assert [r["model"] for r in rows] == ["test_tiny", "test_tiny_bn"]
    for r in rows:
        accs = [100 * run["test_acc"] for run in r["runs"]]
        assert r["seeds"] == 2 and r["top1_mean"] == pytest.approx(sum(accs) / 2)
        assert r["params"] > 0 and r["macs"] > 0 and r["train_img_s"] > 0 and r["latency_ms"] > 0
        assert r["attn_macs"] == 0  # convolutions only
    assert rows[0]["params"] == 8 * 9 + 8 + 16 * 8 * 9 + 16 + 16 * 10 + 10  # TinyNet without BatchNorm
    cost = json.loads((out / "costs" / "test_tiny.json").read_text())
    assert (cost["precision"], cost["channels_last"], cost["batch"]) == ("fp32", False, 8)
    # the two seeds are different runs
    runs = rows[0]["runs"]
    assert Path(runs[0]["run_dir"]).name == "test_tiny-seed1" and Path(runs[1]["run_dir"]).name == "test_tiny-seed2"

    table = compare.write_outputs(rows, out, baseline="test_tiny")
    assert "| test_tiny_bn " in table and "Against test_tiny" in table
    assert "| macs " in table and "| attn_macs " in table
    for name in ("compare.md", "compare.csv", "accuracy_vs_macs.png", "accuracy_vs_latency.png",
                 "training_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "compare.csv").read_text().splitlines()[0] == ",".join(compare.COLUMNS)

    # a second call finds every run and cost done and trains nothing
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare, "train", no_training)
    again = compare.run_comparison(["test_tiny", "test_tiny_bn"], [1, 2], _base(fmnist), out, log=lambda m: None)
    assert [r["top1_mean"] for r in again] == [r["top1_mean"] for r in rows]


def test_cost_is_measured_in_the_recipes_precision(monkeypatch):
    seen = {}

    def fake_bench(name, model, x, warmup, reps, precision, channels_last):
        seen.update(precision=precision, channels_last=channels_last)
        return type("R", (), {"train_images_per_s": 1.0, "train_peak_mb": 1.0, "params": 1, "macs": 4})()

    monkeypatch.setattr(compare, "bench_module", lambda *a, **kw: fake_bench(*a, **kw))
    cost = compare.measure_cost("test_tiny", (1, 28, 28), 10, batch=4, reps=1, precision="bf16", channels_last=True)
    assert seen == {"precision": "bf16", "channels_last": True}
    assert cost["precision"] == "bf16" and cost["latency_ms"] > 0


def test_cost_counts_attention_macs(monkeypatch):
    fake = type("R", (), {"train_images_per_s": 1.0, "train_peak_mb": 1.0, "params": 1, "macs": 4})()
    monkeypatch.setattr(compare, "bench_module", lambda *a, **kw: fake)
    cost = compare.measure_cost("vit_patch4_28", (1, 28, 28), 10, batch=2, reps=1)
    model, _ = compare.build_for_input("vit_patch4_28", (1, 28, 28), num_classes=10)
    attn, tokens = model.blocks[0].attn, model.grid[0] * model.grid[1] + model.num_prefix_tokens
    assert cost["attn_macs"] == len(model.blocks) * attn.heads * tokens * tokens * 2 * attn.dim_head


def test_a_cost_measured_before_attention_was_counted_gets_its_count(tmp_path, monkeypatch):
    """An earlier comparison's cost file has no attn_macs: it is counted (no timing) and the file updated."""
    old = {"params": 1, "macs": 2, "train_img_s": 3.0, "latency_ms": 4.0, "peak_train_mb": 5.0}
    (tmp_path / "costs").mkdir()
    (tmp_path / "costs" / "vit_patch4_28.json").write_text(json.dumps(old))
    monkeypatch.setattr(compare, "measure_cost", lambda *a, **kw: pytest.fail("measured again"))
    cost = compare._cost(tmp_path, "vit_patch4_28", (1, 28, 28), 10, 4, TrainConfig(), log=lambda m: None)
    assert cost == {**old, "attn_macs": cost["attn_macs"]} and cost["attn_macs"] > 0
    assert json.loads((tmp_path / "costs" / "vit_patch4_28.json").read_text()) == cost


def test_interrupted_run_is_resumed_not_restarted(fmnist, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    base = _base(fmnist)
    compare.run_comparison(["test_tiny"], [1], base, out, cost_batch=4, log=lambda m: None)
    run_dir = out / "runs" / "test_tiny-seed1"
    (run_dir / "result.json").unlink()  # as if killed before the end
    calls = []
    real_train = compare.train

    def spy(cfg, resume=False):
        calls.append(resume)
        return real_train(cfg, resume=resume)

    monkeypatch.setattr(compare, "train", spy)
    compare.run_comparison(["test_tiny"], [1], base, out, log=lambda m: None)
    assert calls == [True] and (run_dir / "result.json").is_file()


def test_other_recipe_in_same_folder_is_refused(fmnist, tmp_path):
    out = tmp_path / "cmp"
    compare.run_comparison(["test_tiny"], [1], _base(fmnist), out, cost_batch=4, log=lambda m: None)
    with pytest.raises(ValueError, match="differs in epochs"):
        compare.run_comparison(["test_tiny"], [1], _base(fmnist, epochs=2), out, log=lambda m: None)


@pytest.mark.bad_input
@pytest.mark.parametrize(("bad", "match"), [
    ({"models": []}, "models: got an empty list"),
    ({"seeds": []}, "seeds: got an empty list"),
    ({"seeds": [1, 1]}, "seeds: seed 1 is given 2 times"),
    ({"models": ["test_tiny", "test_tiny"]}, "models: model 'test_tiny' is given 2 times"),
    ({"models": ["test_tiny", "resnt20"]}, "models: unknown model .*did you mean 'resnet20'"),
    ({"seeds": [1, "2"]}, "seeds: got '2', needed integers"),
    ({"baseline": "resnet20"}, "baseline: got 'resnet20', needed one of 'test_tiny'"),
    ({"cost_batch": 0}, "cost_batch: got 0, needed a positive number"),
    ({"out": "a_file"}, "out: 'a_file' is a file"),
    ({"base": {"device": "tpu"}}, "--device: got 'tpu'"),
    ({"base": {"data": "no_such_folder"}}, "--data: got 'no_such_folder'"),
    ({"base": {"model_args": {"no_such_keyword": 1}}}, "--model-arg no_such_keyword"),
])
def test_every_check_comes_before_any_work(fmnist, tmp_path, monkeypatch, bad, match):
    """A mistake anywhere (the second of two model names, a repeated seed, the recipe) stops the comparison
    before the first model trains, and leaves no output folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(compare, "train", lambda *a, **kw: pytest.fail("trained before every check passed"))
    args = {"models": ["test_tiny"], "seeds": [1], "out": "cmp", "cost_batch": None, "baseline": None, **bad}
    with pytest.raises(UsageError, match=match):
        base = _base(fmnist, **args.pop("base", {}))  # a TrainConfig checks its values when it is made
        compare.run_comparison(args["models"], args["seeds"], base, args["out"], args["cost_batch"],
                               log=lambda m: None, baseline=args["baseline"])
    assert not (tmp_path / "cmp").exists()


def test_each_model_gets_its_own_colour_and_marker():
    """Old plots used matplotlib's default cycle: with 12 models two blue and two orange lines."""
    names = [f"m{i}" for i in range(20)]
    styles = compare.plot_styles(names)
    assert len({colour for colour, _ in styles.values()}) == 20
    assert len({marker for _, marker in list(styles.values())[:13]}) == 13
    assert len(set(styles.values())) == 20


def test_cli_compare_on_an_image_folder(tmp_path, capsys):
    """The user's own images: scikit-learn digits as 8x8 PNG files; GE-theta is built for that size."""
    root = make_digit_folder(tmp_path / "digits", classes=(0, 1, 2), per_class=8)
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--models", "resnet20,ge_theta_resnet20", "--data", str(root), "--epochs", "1",
                     "--seeds", "0", "--batch-size", "6", "--threads", "1", "--no-progress", "--out", str(out),
                     "--cost-batch", "2"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| resnet20 " in text and "| ge_theta_resnet20 " in text and str(out) in text
    config = json.loads((out / "runs" / "resnet20-seed0" / "config.json").read_text())
    assert config["data"]["num_classes"] == 3 and config["data"]["image_size"] == [8, 8]
