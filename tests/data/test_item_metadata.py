"""Item metadata stored with checkpoints: data.item_metadata (a file, auto, none), restricted to
the catalogue, written into every checkpoint folder by training and read back by serving."""

from __future__ import annotations

import json

import pytest
import yaml

from genrec.checkpoint import read_item_metadata
from genrec.config import DataConfig
from genrec.data.item_metadata import read_metadata, run_metadata
from genrec.errors import DataFormatError


def test_a_named_file_is_kept_for_the_catalogue_items_only(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,year\ni1,First,1999\ni2,Second,\nzz,Not in the log,2001\n")
    meta = run_metadata(DataConfig(item_metadata=str(path)), ["i1", "i2", "i3"])
    assert meta == {"i1": {"title": "First", "year": "1999"}, "i2": {"title": "Second"}}
    assert run_metadata(DataConfig(item_metadata="none"), ["i1"]) is None
    assert run_metadata(DataConfig(item_metadata=str(path)), ["q"]) is None  # nothing of the catalogue: nothing stored
    with pytest.raises(DataFormatError, match="no such metadata file"):
        run_metadata(DataConfig(item_metadata=str(tmp_path / "missing.csv")), ["i1"])


def test_auto_finds_the_datasets_own_file_and_skips_a_broken_one(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|0\n2|GoldenEye (1995)|01-Jan-1995||http://y|0\n",
                                   encoding="latin-1")
    monkeypatch.setenv("GENREC_SOURCE", str(tmp_path))
    meta = run_metadata(DataConfig(dataset="ml-100k"), ["1", "2"])
    assert meta["1"]["title"] == "Toy Story (1995)" and meta["2"]["title"] == "GoldenEye (1995)"
    assert run_metadata(DataConfig(), ["1"]) is None  # a custom log has no file of its own
    beauty = tmp_path / "p5" / "beauty"
    beauty.mkdir(parents=True)
    (beauty / "datamaps.json").write_text("{not json")
    assert run_metadata(DataConfig(dataset="beauty"), ["1"]) is None  # auto: broken file skipped, said on stderr
    assert "no item metadata is stored" in capsys.readouterr().err
    with pytest.raises(DataFormatError, match="unreadable item metadata"):
        read_metadata(beauty / "datamaps.json")


def test_training_writes_the_metadata_into_every_checkpoint(tmp_path, synthetic_csv):
    from genrec.cli import main

    meta = tmp_path / "titles.json"
    meta.write_text(json.dumps([{"item_id": f"i{k}", "title": f"Step {k}"} for k in range(40)]))
    cfg = {
        "data": {"dataset": "custom", "source": str(synthetic_csv), "cache_dir": str(tmp_path / "cache"), "item_metadata": str(meta),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "sasrec", "max_seq_len": 10, "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 16, "num_negatives": 8, "num_threads": 1, "device": "cpu", "precision": "fp32"},
        "eval": {"ks": [10]},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]) == 0
    meta.unlink()  # the checkpoints carry it
    for name in ("best", "last"):
        got = read_item_metadata(tmp_path / "run" / name)
        assert got is not None and got["i3"] == {"title": "Step 3"} and len(got) == 40
