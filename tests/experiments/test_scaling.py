"""Scaling sweeps: grid, resumability, CSV contract, power-law fit, plots, FLOPs estimate."""

import csv
import json

import numpy as np
import pytest
import yaml

from genrec.cli import main
from genrec.experiments.scaling import SweepConfig, point_config
from genrec.experiments.scaling.fits import power_law_fit
from genrec.experiments.scaling.flops import count_parameters, training_flops


def test_power_law_fit_recovers_exact_law_and_r2():
    x = np.array([1e3, 1e4, 1e5, 1e6])
    fit = power_law_fit(x, 2.0 * x**0.25)
    assert fit["a"] == pytest.approx(2.0) and fit["b"] == pytest.approx(0.25) and fit["r2"] == pytest.approx(1.0)
    # hand-computed: log-log points (0, 0), (1, 1), (2, 0) -> slope 0, mean 1/3, R² = 0
    noisy = power_law_fit(np.exp(np.array([0.0, 1.0, 2.0])), np.exp(np.array([0.0, 1.0, 0.0])))
    assert noisy["b"] == pytest.approx(0.0, abs=1e-12) and noisy["r2"] == pytest.approx(0.0, abs=1e-12)
    assert power_law_fit(np.array([5.0, 5.0]), np.array([1.0, 2.0])) is None


def test_plot_joins_each_depth_in_order_of_x_on_both_splits(tmp_path, monkeypatch):
    """Rows in grid order (widths wide to narrow, depths interleaved) draw one solid line per
    backbone and depth, sorted by x, one marker per depth, on the validation and the test panel."""
    from matplotlib.figure import Figure

    from genrec.experiments.scaling.report import plot

    rows = [{"backbone": b, "data_fraction": 1.0, "layers": l, "width": w, "params_nonembedding": l * w * w,
             "flops": 7.0 * l * w * w, "valid_ndcg@10": 0.01 * l + w / 1e4, "test_ndcg@10": 0.009 * l + w / 1e4}
            for b in ("hstu", "sasrec") for w in (64, 16, 32) for l in (4, 1, 2)]
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: figures.append((fig, path)))
    paths = plot(rows, [], "ndcg@10", tmp_path)
    assert [p.name for p in paths] == ["ndcg_at_10_vs_params.png", "ndcg_at_10_vs_flops.png"] == [p.name for _, p in figures]
    for fig, _ in figures:
        valid, test = fig.axes
        for ax in (valid, test):
            lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
            assert len(lines) == 2 * 3  # backbones x depths
            for ln in lines:
                x = list(ln.get_xdata())
                assert x == sorted(x) and len(x) == 3
            assert len({ln.get_marker() for ln in lines}) == 3  # one per depth
        assert valid.get_ylabel().startswith("valid") and test.get_ylabel().startswith("test")


@pytest.fixture
def sweep_file(tmp_path, synthetic_csv):
    base = {
        "data": {"dataset": "custom", "source": str(synthetic_csv), "format": "csv", "cache_dir": str(tmp_path / "cache"),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "hstu", "max_seq_len": 10, "num_heads": 2, "dropout": 0.1, "attention_dim": 3},
        "train": {"epochs": 2, "batch_size": 16, "num_negatives": 8, "lr": 0.01},
        "eval": {"ks": [1, 10]},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"base": "base.yaml", "overrides": ["train.epochs=1"], "layers": [1, 2], "widths": [8, 16],
             "backbones": {"hstu": {"name": "hstu"}, "sasrec-pre-ln": {"name": "sasrec", "residual": "pre_ln"}, "llama": {"name": "llama"}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_scale_writes_results_fits_plots_and_skips_finished_points(tmp_path, sweep_file, capsys):
    out = tmp_path / "sweep"
    assert main(["scale", str(sweep_file), "--out", str(out), "--only", "hstu,llama"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["points"] == 8 and first["ran"] == 8
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["backbone"], r["layers"], r["width"]) for r in rows} == {(b, l, w) for b in ("hstu", "llama") for l in "12" for w in ("8", "16")}
    for r in rows:
        assert int(r["params"]) > int(r["params_nonembedding"]) > 0 and float(r["flops"]) > 0 and float(r["seconds"]) > 0
        assert 0 <= float(r["test_ndcg@10"]) <= 1 and "valid_ndcg@10" in r
    wide, narrow = (next(r for r in rows if r["backbone"] == "hstu" and r["layers"] == "2" and r["width"] == w) for w in ("16", "8"))
    assert int(wide["params_nonembedding"]) > int(narrow["params_nonembedding"])
    assert (out / "ndcg_at_10_vs_params.png").stat().st_size > 1000 and (out / "ndcg_at_10_vs_flops.png").exists()
    assert {f["group"] for f in first["fits"]} == {"hstu", "llama"}
    assert {f["metric"] for f in first["fits"]} == {"valid_ndcg@10", "test_ndcg@10"}  # validation fitted too, not only test
    stamp = (out / "points" / "hstu-L1-D8-f1" / "row.json").stat().st_mtime_ns
    # second call: the finished points are reused, the remaining backbone runs
    assert main(["scale", str(sweep_file), "--out", str(out)]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["points"] == 12 and (out / "points" / "hstu-L1-D8-f1" / "row.json").stat().st_mtime_ns == stamp


def test_data_fractions_with_command_line_overrides(tmp_path, sweep_file, capsys):
    raw = yaml.safe_load(sweep_file.read_text())
    raw.update(layers=[1], widths=[8], data_fractions=[0.5, 1.0], backbones={"hstu": {"name": "hstu"}, "sasrec": {"name": "sasrec"}})
    sweep_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "seed7"
    assert main(["scale", str(sweep_file), "train.seed=7", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["points"] == 4 and (out / "ndcg_at_10_vs_data.png").stat().st_size > 1000
    assert yaml.safe_load((out / "sweep.yaml").read_text())["overrides"] == ["train.epochs=1", "train.seed=7"]
    point = yaml.safe_load((out / "points" / "sasrec-L1-D8-f0.5" / "config.yaml").read_text())
    assert point["train"]["seed"] == 7 and point["train"]["data_fraction"] == 0.5
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["backbone"], r["data_fraction"]) for r in rows) == [("hstu", "0.5"), ("hstu", "1.0"), ("sasrec", "0.5"), ("sasrec", "1.0")]
    # another seed into the same folder would mix two experiments: refused, nothing trained
    assert main(["scale", str(sweep_file), "train.seed=8", "--out", str(out)]) != 0
    assert "use another --out" in capsys.readouterr().err


def test_flops_estimate_by_hand(tmp_path, sweep_file):
    from genrec.models import build_model

    sweep, base_dir = SweepConfig.load(sweep_file)
    cfg = point_config(sweep, base_dir, {"backbone": "hstu", "layers": 1, "width": 8, "data_fraction": 1.0})
    assert cfg.train.epochs == 1 and cfg.model.embedding_dim == 8 and cfg.model.num_heads == 2
    cfg.model.num_items = 40
    counts = count_parameters(build_model(cfg.model))
    assert counts["params"] - counts["params_nonembedding"] == 41 * 8 + 10 * 8  # item table + positions

    class Windows:  # two windows of 3 and 1 inputs
        starts, ends = np.array([0, 10]), np.array([4, 12])

    # tokens 4; c̄ = (3·4/2 + 1) / 4 = 1.75; per token 2·N + 4·1·8·1.75 + 2·8·9
    per_token = 2 * counts["params_nonembedding"] + 4 * 8 * 1.75 + 2 * 8 * 9
    assert training_flops(cfg, counts["params_nonembedding"], Windows, epochs=2, num_items=40) == pytest.approx(3 * per_token * 4 * 2)
    # full softmax scores every item: S = 40 per target instead of 1 + 8 sampled
    cfg.train.loss = "full_softmax"
    full = 2 * counts["params_nonembedding"] + 4 * 8 * 1.75 + 2 * 8 * 40
    assert training_flops(cfg, counts["params_nonembedding"], Windows, epochs=2, num_items=40) == pytest.approx(3 * full * 4 * 2)


def test_sweep_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": "x.yaml", "layers": [1], "widths": [8], "backbones": {"a": {"residual": "pre_ln"}}}))
    with pytest.raises(Exception, match="needs a model name"):
        SweepConfig.load(bad)
    bad.write_text(yaml.safe_dump({"base": "x.yaml", "layers": [1], "widths": [8], "backbones": {"a": {"name": "gpt"}}, "depth": 3}))
    with pytest.raises(Exception, match="unknown sweep keys"):
        SweepConfig.load(bad)
