"""Item side information: every feature file format, the token table, the model's fused item
vectors, and a whole training run that reads attributes (synthetic; Beauty's own file when present)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from genrec.config import DataConfig
from genrec.data.item_features import ItemFeatures, load_item_features, read_item_features
from genrec.errors import ConfigError, DataFormatError
from genrec.models import HSTU, HSTUConfig, SASRec, SASRecConfig, attach_item_attributes

from tests.conftest import shared_file


def test_s3rec_json_and_gzip(tmp_path):
    path = tmp_path / "Beauty_item2attributes.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"1": [3, 4], "2": [4], "9": []}).encode()))
    assert read_item_features(path) == {"1": ["attr=3", "attr=4"], "2": ["attr=4"], "9": []}


def test_nested_json_fields(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"a": {"brand": "x", "tags": ["p", "q"], "new": True}, "b": {"brand": "y", "new": False}}))
    got = read_item_features(path)
    assert sorted(got["a"]) == ["brand=x", "new", "tags=p", "tags=q"] and got["b"] == ["brand=y"]


def test_csv_text_multivalue_numeric_and_empty(tmp_path):
    path = tmp_path / "items.csv"
    rows = ["item_id,genre,price"] + [f"i{k},{'Action|Drama' if k == 0 else 'Comedy'},{k}" for k in range(10)] + ["i10,,"]
    path.write_text("\n".join(rows) + "\n")
    got = read_item_features(path)
    assert got["i0"] == ["genre=Action", "genre=Drama", "price=q0"]
    assert got["i9"] == ["genre=Comedy", "price=q9"]  # deciles of 0..9: one value per decile
    assert got["i10"] == []  # empty cells give nothing


def test_csv_ids_keep_their_leading_zeros(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,brand\n007,acme\n0205616461,zen\n")
    f = ItemFeatures.from_raw(read_item_features(path), ["007", "0205616461"], str(path))
    assert f.stats["items_with_attributes"] == 2 and f.stats["ids_not_in_catalogue"] == 0


def test_a_file_that_matches_no_item_is_an_error(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,brand\nx1,acme\n")
    with pytest.raises(DataFormatError, match="no item of the catalogue has attributes"):
        load_item_features(DataConfig(item_features=str(path)), np.array(["1", "2"]))


def test_empty_id_tensors():
    model = _model()
    assert model.item_vectors(torch.zeros(0, dtype=torch.long)).shape == (0, 8)
    assert model.item_vectors(torch.zeros(3, 0, dtype=torch.long)).shape == (3, 0, 8)


def test_tsv_and_parquet(tmp_path):
    tsv = tmp_path / "items.tsv"
    tsv.write_text("asin\tbrand\nB1\tacme\nB2\tzen\n")
    assert read_item_features(tsv) == {"B1": ["brand=acme"], "B2": ["brand=zen"]}
    pq.write_table(pa.table({"movieId": [1, 2], "lang": ["en", "fr"]}), tmp_path / "m.parquet")
    assert read_item_features(tmp_path / "m.parquet") == {"1": ["lang=en"], "2": ["lang=fr"]}


def test_movielens_files(tmp_path):
    flags = ["0"] * 19
    flags[1], flags[5] = "1", "1"  # Action, Comedy
    (tmp_path / "u.item").write_text("7|Some Movie (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n", encoding="latin-1")
    assert read_item_features(tmp_path / "u.item") == {"7": ["genre=Action", "genre=Comedy", "decade=1990s"]}
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation|Children's\n", encoding="latin-1")
    assert read_item_features(tmp_path / "movies.dat") == {"1": ["genre=Animation", "genre=Children's", "decade=1990s"]}


@pytest.mark.parametrize("name, text, where", [
    ("u.item", "7|Title|date\n", "u.item, line 1"),
    ("movies.dat", "1::Toy Story (1995)::Animation\n2::broken\n", "movies.dat, line 2"),
    ("bad.json", '{"1": [1,\n 2', "bad.json, line 2"),
    ("list.json", '{"1": 5}', "item '1'"),
    ("dup.csv", "item,c\nx,1\nx,2\n", "appears on more than one row"),
    ("f.xml", "<a/>", "unknown item feature format"),
])
def test_malformed_files_name_the_file_and_place(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataFormatError, match=where.replace("(", r"\(").replace(")", r"\)")):
        read_item_features(path)


def test_missing_file():
    with pytest.raises(DataFormatError, match="no such file"):
        read_item_features("/nonexistent/features.csv")


def test_token_table_maps_onto_the_catalogue():
    raw = {"b": ["x", "y"], "a": ["x"], "zz": ["w"]}  # zz is not in the catalogue
    f = ItemFeatures.from_raw(raw, ["a", "b", "c"], "mem")
    assert f.vocab == ["x", "y"]  # most frequent first; w (only on an unknown item) is not in it
    assert f.tokens.tolist() == [[0, 0], [1, 0], [1, 2], [0, 0]]  # row 0 = padding item; c has none
    assert f.stats == {"items_with_attributes": 2, "items": 3, "attribute_tokens": 2, "max_per_item": 2, "ids_not_in_catalogue": 1}


def _model(cls=HSTU, cfg_cls=HSTUConfig, mode="sum"):
    torch.manual_seed(0)
    model = cls(cfg_cls(num_items=4, max_seq_len=5, embedding_dim=8, num_layers=1, num_heads=1, dropout=0.0,
                        item_features=mode, num_attribute_tokens=3, max_item_attributes=2))
    attach_item_attributes(model, torch.tensor([[0, 0], [1, 2], [1, 2], [3, 0], [0, 0]]))
    return model


@pytest.mark.parametrize("mode", ["sum", "concat"])
def test_item_vectors_fuse_attributes(mode):
    model = _model(mode=mode)
    with torch.no_grad():
        model.item_embedding.weight.zero_()  # id embeddings of never-trained items: attributes alone decide
    v = model.item_vectors(torch.tensor([1, 2, 3, 4]))
    torch.testing.assert_close(v[0], v[1])  # same attributes, same vector
    assert (v[0] - v[2]).abs().max() > 1e-3  # other attributes, other vector
    assert torch.equal(v[3], torch.zeros(8))  # no attributes and a zero id embedding: nothing
    torch.testing.assert_close(model.item_vectors(start=1), v)  # the whole-table path agrees with ids
    if mode == "sum":  # mean of the attribute embeddings 1 and 2, added to the (zero) id embedding
        expected = torch.nn.functional.normalize(model.attribute_embedding.weight[1:3].mean(0), dim=-1)
        torch.testing.assert_close(v[0], expected)


def test_attributes_train_and_travel_with_the_checkpoint(tmp_path):
    from genrec.training.losses import sampled_softmax_loss

    model = _model(SASRec, SASRecConfig)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    sampled_softmax_loss(q, torch.tensor([1, 2, 3]), model, 4, 0.05, share=False).backward()
    assert model.attribute_embedding.weight.grad[1:].abs().sum() > 0  # attributes learn
    assert torch.equal(model.attribute_embedding.weight.grad[0], torch.zeros(8))  # padding token never does
    assert "item_attributes" in model.state_dict()


def test_model_without_attributes_is_a_clear_error():
    with pytest.raises(ConfigError, match="data.item_features"):
        HSTU(HSTUConfig(num_items=4, item_features="sum"))
    with pytest.raises(ConfigError, match="item_features"):
        HSTUConfig(num_items=4, item_features="average")
    from genrec.models import Popularity, PopularityConfig

    with pytest.raises(ConfigError, match="reads no item attributes"):  # not a sequence backbone: said, not ignored
        attach_item_attributes(Popularity(PopularityConfig(num_items=4)), torch.zeros(5, 2, dtype=torch.long))
    model = _model()
    with pytest.raises(ConfigError, match="does not fit"):
        attach_item_attributes(model, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="attribute ids"):
        attach_item_attributes(model, torch.full((5, 2), 9))


def test_training_run_with_item_features(tmp_path, synthetic_csv):
    """A whole run: attributes read from a CSV beside the log, stated in the protocol, saved in the
    checkpoint, and the checkpoint recommends without the feature file."""
    from genrec.cli import main
    from genrec.recommender import Recommender

    feats = tmp_path / "items.csv"
    feats.write_text("item_id,parity,block\n" + "".join(f"i{k},{'even' if k % 2 == 0 else 'odd'},b{k // 10}\n" for k in range(40)))
    cfg = {
        "data": {"dataset": "custom", "source": str(synthetic_csv), "cache_dir": str(tmp_path / "cache"), "item_features": str(feats),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "hstu", "max_seq_len": 10, "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.0,
                  "time_bias": False, "item_features": "concat"},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "num_negatives": 8, "num_threads": 1, "device": "cpu", "precision": "fp32"},
        "eval": {"ks": [1, 10]},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any("item features (concat)" in n and "6 attribute tokens, 40 of 40 items" in n for n in metrics["protocol"]["notes"])
    feats.unlink()  # the checkpoint carries the attribute table: eval and serving need no feature file
    assert main(["eval", str(tmp_path / "run" / "best")]) == 0
    rec = Recommender.load(tmp_path / "run" / "best")
    out = rec.recommend(["i3", "i4"], k=5)
    assert len(out) == 5


def test_auto_reads_the_registered_file_from_the_source_folder(tmp_path, monkeypatch):
    folder = tmp_path / "s3rec"
    folder.mkdir()
    (folder / "Beauty_item2attributes.json").write_text(json.dumps({"1": [5], "2": [5, 6]}))
    cfg = DataConfig(dataset="beauty", source=str(folder / "Beauty.txt"), item_features="auto", verify_checksum=False,
                     cache_dir=str(tmp_path / "cache"))
    f = load_item_features(cfg, np.array(["1", "2"]))
    assert f.vocab == ["attr=5", "attr=6"] and f.tokens.tolist() == [[0, 0], [1, 0], [1, 2]]
    # not beside the log: $GENREC_SOURCE folders are searched next
    elsewhere = tmp_path / "shared"
    elsewhere.mkdir()
    (elsewhere / "Beauty_item2attributes.json").write_text(json.dumps({"2": [7]}))
    monkeypatch.setenv("GENREC_SOURCE", str(elsewhere))
    cfg = DataConfig(dataset="beauty", source=str(tmp_path / "log" / "Beauty.txt"), item_features="auto", verify_checksum=False,
                     cache_dir=str(tmp_path / "cache"))
    assert load_item_features(cfg, np.array(["1", "2"])).tokens.tolist() == [[0], [0], [1]]
    with pytest.raises(ConfigError, match="no registered attribute file"):
        load_item_features(DataConfig(dataset="instruments", item_features="auto"), np.array(["1"]))


def test_auto_reads_the_file_inside_the_official_zip(tmp_path):
    import zipfile

    flags = ["0"] * 19
    flags[8] = "1"  # Drama
    with zipfile.ZipFile(tmp_path / "ml-100k.zip", "w") as z:
        z.writestr("ml-100k/u.item", "1|A Film (1994)|01-Jan-1994||http://x|" + "|".join(flags) + "\n")
    cfg = DataConfig(dataset="ml-100k", source=str(tmp_path / "ml-100k.zip"), item_features="auto", verify_checksum=False,
                     cache_dir=str(tmp_path / "cache"))
    f = load_item_features(cfg, np.array(["1"]))
    assert f.vocab == ["decade=1990s", "genre=Drama"] and f.tokens.tolist() == [[0, 0], [1, 2]]


def test_beauty_attributes_from_shared_data():
    path = shared_file("amazon-2014-5core/s3rec/Beauty_item2attributes.json.gz")
    f = ItemFeatures.from_raw(read_item_features(path), [str(i) for i in range(1, 12102)], str(path))
    assert f.stats["items_with_attributes"] == 12101 and f.stats["ids_not_in_catalogue"] == 0
    assert f.max_per_item == 6 and f.num_tokens == 637
