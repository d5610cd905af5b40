"""User side information: the user feature files, the per-user token table, the model's profile
term (padded and packed rows agree, every backbone reads it), batches, a whole training run that
reads a user file and serves with attributes (synthetic; MovieLens' own files when present)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from genrec.config import DataConfig, ExperimentConfig
from genrec.data.batches import TrainBatches, eval_batches
from genrec.data.prepare import SequenceData
from genrec.data.user_features import age_group, read_user_features, with_user_features
from genrec.errors import ConfigError, DataFormatError
from genrec.models import BACKBONES, build_model, model_config_class

from tests.conftest import shared_file


def test_movielens_user_files(tmp_path):
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|17|F|student|T8H1N\n3|60|M|retired|\n")
    assert read_user_features(tmp_path / "u.user") == {
        "1": ["age=18-24", "gender=M", "occupation=technician", "zip=8"],
        "2": ["age=under-18", "gender=F", "occupation=student", "zip=T"],
        "3": ["age=56+", "gender=M", "occupation=retired"],  # no zip code: no zip token
    }
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    assert read_user_features(tmp_path / "users.dat") == {
        "1": ["age=under-18", "gender=F", "occupation=10", "zip=4"],  # u.user ages fall into users.dat's groups
        "2": ["age=56+", "gender=M", "occupation=16", "zip=7"],
    }


def test_age_groups_are_movielens_1m_groups():
    assert [age_group(a) for a in (7, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 90)] == [
        "under-18", "18-24", "18-24", "25-34", "25-34", "35-44", "35-44", "45-49", "45-49", "50-55", "50-55", "56+", "56+"]


def test_tables_and_json(tmp_path):
    path = tmp_path / "users.csv"
    path.write_text("reviewerID,country,age\n" + "".join(f"r{k},{'fr' if k % 2 else 'de|at'},{20 + k}\n" for k in range(10)))
    got = read_user_features(path)
    assert got["r0"] == ["country=de", "country=at", "age=q0"] and got["r9"] == ["country=fr", "age=q9"]
    (tmp_path / "u.json").write_text(json.dumps({"7": {"tier": "gold", "new": True}, "8": {"tier": "free"}}))
    assert sorted(read_user_features(tmp_path / "u.json")["7"]) == ["new", "tier=gold"]


@pytest.mark.parametrize("name, text, where", [
    ("u.user", "1|24|M|technician|85711\n2|x|F|other|1\n", "u.user, line 2"),
    ("users.dat", "1::F::33::10::48067\n", "users.dat, line 1"),
    ("dup.csv", "user_id,c\nx,1\nx,2\n", "user id 'x' appears on more than one row"),
    ("f.xml", "<a/>", "unknown user feature format"),
])
def test_malformed_files_name_the_file_and_place(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataFormatError, match=where.replace("(", r"\(").replace(")", r"\)")):
        read_user_features(path)


def _data(users=("a", "b", "c")) -> SequenceData:
    lengths = [6, 4, 5][: len(users)]
    items = np.concatenate([np.arange(1, n + 1) + 5 * u for u, n in enumerate(lengths)])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return SequenceData(offsets, items, np.arange(len(items)) * 7, np.array([str(i) for i in range(1, 20)], dtype=object),
                        np.array(users, dtype=object), {})


def test_the_token_table_follows_the_users_of_the_log(tmp_path):
    path = tmp_path / "users.csv"
    path.write_text("user,g,job\nc,f,x\na,m,x\nzz,f,y\n")  # b has none; zz is not in the log
    data = with_user_features(_data(), DataConfig(user_features=str(path)))
    assert data.user_vocabulary == ("job=x", "g=f", "g=m")  # most frequent first, over the log's users only
    assert data.user_tokens.tolist() == [[1, 3], [0, 0], [1, 2]]  # users a, b, c
    assert data.user_feature_stats["users_with_attributes"] == 2 and data.user_feature_stats["ids_not_in_log"] == 1
    path.write_text("user,g\nq,f\n")
    with pytest.raises(DataFormatError, match="no user of the log has attributes"):
        with_user_features(_data(), DataConfig(user_features=str(path)))
    with pytest.raises(ConfigError, match="data.user_features"):
        with_user_features(_data(), DataConfig())


def test_multi_domain_rows_get_their_users_attributes(tmp_path):
    """Merged multi-domain data has one row per user and domain (``<domain>:<user>``): each row
    reads the user's own attributes."""
    from genrec.data.prepare import load_prepared, prepare

    a, b, users = tmp_path / "beauty.csv", tmp_path / "toys.csv", tmp_path / "users.csv"
    a.write_text("user_id,item_id\n" + "".join(f"u{u},a{u + i}\n" for u in range(3) for i in range(4)))
    b.write_text("user_id,item_id\n" + "".join(f"u{u},b{u + i}\n" for u in range(1, 4) for i in range(4)))
    users.write_text("user_id,g\nu0,x\nu1,y\nu3,x\n")  # u2 has none
    cfg = DataConfig(domains=[str(a), str(b)], cache_dir=str(tmp_path / "c"), user_features=str(users))
    data = with_user_features(load_prepared(prepare(cfg)), cfg)
    got = {u: [data.user_vocabulary[t - 1] for t in row if t] for u, row in zip(data.user_ids, data.user_tokens.tolist())}
    assert got == {"beauty:u0": ["g=x"], "beauty:u1": ["g=y"], "beauty:u2": [], "toys:u1": ["g=y"], "toys:u2": [], "toys:u3": ["g=x"]}
    stats = data.user_feature_stats
    assert stats["users_with_attributes"] == 3 and stats["users"] == 4 and stats["ids_not_in_log"] == 0  # distinct users
    with pytest.raises(ConfigError, match="give the file of user attributes"):
        DataConfig(domains=[str(a), str(b)], user_features="auto")
    with pytest.raises(ConfigError, match="data.item_features"):
        DataConfig(domains=[str(a), str(b)], item_features="items.json")


@pytest.mark.parametrize("fraction, skip", [(1.0, None), (0.5, None), (1.0, np.array([2, 31]))])
def test_batches_carry_each_users_tokens(tmp_path, fraction, skip):
    # five users, user u's items are 10u+1.., so a token's item names its user; user b (3 items)
    # has no training window and is dropped: a row whose tokens came from the wrong user shows
    lengths = [6, 3, 5, 4, 7]
    items = np.concatenate([np.arange(1, n + 1) + 10 * u for u, n in enumerate(lengths)])
    data = SequenceData(np.concatenate([[0], np.cumsum(lengths)]), items, np.arange(len(items)) * 7,
                        np.array([str(i) for i in range(1, 50)], dtype=object), np.array(list("abcde"), dtype=object), {})
    path = tmp_path / "users.csv"
    path.write_text("user,g,h\na,1,x\nb,2,x\nc,3,y\nd,4,y\ne,5,x\n")  # g is numeric: deciles, one token per user
    data = with_user_features(data, DataConfig(user_features=str(path)))
    assert len({tuple(r) for r in data.user_tokens.tolist()}) == 5  # every user's row differs
    batches = TrainBatches(data, max_seq_len=5, batch_size=10, fraction=fraction, seed=1, skip_items=skip)
    packed_batches = TrainBatches(data, max_seq_len=5, batch_size=10, pack=True, fraction=fraction, seed=1, skip_items=skip)
    padded, packed = next(batches.epoch(seed=0, epoch=0)), next(packed_batches.epoch(seed=0, epoch=0))
    assert 1 not in batches.users.tolist()  # b: no window
    for r in range(padded.items.size(0)):  # [B 1 M]: the row's user
        assert padded.user_tokens[r, 0].tolist() == data.user_tokens[(int(padded.items[r, 0]) - 1) // 10].tolist()
    assert packed.user_tokens.shape[:2] == packed.items.shape
    for r in range(packed.items.size(0)):  # [B N M]: each token its own user's
        for c in range(packed.items.size(1)):
            if packed.items[r, c]:
                assert packed.user_tokens[r, c].tolist() == data.user_tokens[(int(packed.items[r, c]) - 1) // 10].tolist()
    batch = next(eval_batches(data, "test", 5, 10))
    assert batch.user_tokens[:, 0].tolist() == data.user_tokens[batch.users.numpy()].tolist()


def _model(name: str, vocab=("g=f", "g=m", "job=x"), mode="sum"):
    torch.manual_seed(0)
    cls = model_config_class(name)
    extra = {"time_bias": False} if "time_bias" in {f.name for f in dataclasses.fields(cls)} else {}
    cfg = cls(name=name, num_items=20, max_seq_len=6, embedding_dim=8, num_layers=1, num_heads=1, dropout=0.0,
              user_features=mode, user_attributes=list(vocab), max_user_attributes=2, **extra)
    return build_model(cfg).eval()


# hf_llama takes the same input path (SequentialRecommender.embed_items) but needs a saved local
# Llama to build (tests/training/test_distill.py builds one)
@pytest.mark.parametrize("mode", ["sum", "concat"])
@pytest.mark.parametrize("name", [b for b in BACKBONES if b != "hf_llama"])
def test_every_backbone_reads_the_profile_and_packed_rows_agree(name, mode):
    model = _model(name, mode=mode)
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    a, b, none = torch.tensor([[[1, 3]], [[2, 0]]]), torch.tensor([[[2, 3]], [[2, 0]]]), torch.zeros(2, 1, 2, dtype=torch.long)
    with torch.no_grad():
        ua, ub = model.user_vectors(items, user_tokens=a), model.user_vectors(items, user_tokens=b)
        assert (ua[0] - ub[0]).abs().max() > 1e-4  # other attributes, other query
        torch.testing.assert_close(ua[1], ub[1])  # same attributes, same query
        per_token = model.encode(items, user_tokens=a.expand(-1, 4, -1))  # [B N M] = [B 1 M] broadcast
        torch.testing.assert_close(per_token, model.encode(items, user_tokens=a))
        # packed: both sequences in one row, each token with its own user's attributes
        seg_items = torch.tensor([[1, 2, 3, 4, 5]])
        seg_users = torch.tensor([[[1, 3]] * 3 + [[2, 0]] * 2])
        packed = model.encode(seg_items, segments=torch.tensor([[1, 1, 1, 2, 2]]), user_tokens=seg_users)[0]
        torch.testing.assert_close(packed[:3], per_token[0, :3], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[3:], per_token[1, :2], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(model.user_vectors(items, user_tokens=none)).all()  # a user without attributes: history alone
    with pytest.raises(ValueError, match="user attributes"):
        model.user_vectors(items)
    with pytest.raises(ValueError, match="expected"):
        model.user_vectors(items, user_tokens=torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("name", [b for b in BACKBONES if b != "hf_llama"])
def test_the_profile_token_comes_first_and_keeps_the_items_causal(name):
    model = _model(name, mode="token")  # max_seq_len 6: the profile plus at most 5 items
    assert model.max_history == 5
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    a, b = torch.tensor([[[1, 3]], [[2, 0]]]), torch.tensor([[[2, 3]], [[2, 0]]])
    with torch.no_grad():
        ha, hb = model.encode(items, user_tokens=a), model.encode(items, user_tokens=b)
        assert ha.shape == (2, 4, 8)  # one output per item: the profile token's own is dropped
        assert (ha[0] - hb[0]).abs().max() > 1e-4 and torch.allclose(ha[1], hb[1])  # the profile reaches every position
        later = model.encode(torch.tensor([[1, 2, 9, 7], [4, 5, 0, 0]]), user_tokens=a)
        torch.testing.assert_close(later[:, :2], ha[:, :2])  # position i reads the profile and items 0..i only
        _, layers = model.encode_layers(items, user_tokens=a)
        assert all(s.shape[:2] == (2, 4) for s in layers)
        full = model.encode(torch.tensor([[1, 2, 3, 4, 5]]), user_tokens=a[:1])  # exactly max_history items: fits
        torch.testing.assert_close(model.user_vectors(torch.tensor([[1, 2, 3, 4, 5]]), user_tokens=a[:1]), full[:, -1])
        torch.testing.assert_close(model.user_vectors(items, user_tokens=a), torch.stack([ha[0, 2], ha[1, 1]]))
    with pytest.raises(ValueError, match="exceeds the 5 items"):
        model.encode(torch.ones(1, 6, dtype=torch.long), user_tokens=a[:1])
    with pytest.raises(ValueError, match="packed"):
        model.encode(items, segments=torch.ones_like(items), user_tokens=a)


def test_the_profile_token_with_a_time_bias():
    from genrec.models import HSTU, HSTUConfig

    torch.manual_seed(0)
    model = HSTU(HSTUConfig(name="hstu", num_items=20, max_seq_len=6, embedding_dim=8, num_layers=1, num_heads=1, dropout=0.0,
                            time_bias=True, user_features="token", user_attributes=["g=f", "g=m"], max_user_attributes=1)).eval()
    items, ts = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([[100, 5000, 90000], [10, 20, 20]])
    users = torch.tensor([[[1]], [[2]]])
    with torch.no_grad():
        q = model.user_vectors(items, ts, torch.tensor([95000, 30]), user_tokens=users)
        later = model.user_vectors(items, ts, torch.tensor([9_000_000, 30]), user_tokens=users)
    assert torch.isfinite(q).all() and (q[0] - later[0]).abs().max() > 1e-5  # the request time still reaches the query
    torch.testing.assert_close(q[1], later[1])


def test_the_profile_is_trained_and_padding_never_is():
    from genrec.training.losses import sampled_softmax_loss

    model = _model("sasrec").train()
    h = model.encode(torch.tensor([[1, 2, 3]]), user_tokens=torch.tensor([[[1, 0]]]))
    sampled_softmax_loss(h[0], torch.tensor([2, 3, 4]), model, 4, 0.05, share=False).backward()
    grad = model.user_table.weight.grad
    assert grad[1].abs().sum() > 0 and torch.equal(grad[0], torch.zeros(8)) and torch.equal(grad[2], torch.zeros(8))


def test_config_errors():
    with pytest.raises(ConfigError, match="needs data.user_features"):
        ExperimentConfig.from_dict({"model": {"name": "hstu", "user_features": "sum"}})
    with pytest.raises(ConfigError, match="retrieval"):
        ExperimentConfig.from_dict({"data": {"user_features": "u.csv"}, "model": {"name": "hstu", "user_features": "sum"},
                                    "task": {"kind": "ranking"}})
    with pytest.raises(ConfigError, match="user_features"):
        ExperimentConfig.from_dict({"model": {"name": "hstu", "user_features": "average"}})
    with pytest.raises(ConfigError, match="train.pack=false"):
        ExperimentConfig.from_dict({"data": {"user_features": "u.csv"}, "model": {"name": "hstu", "user_features": "token"},
                                    "train": {"pack": True}})
    with pytest.raises(ConfigError, match="data.user_features"):
        build_model(model_config_class("hstu")(num_items=4, user_features="sum"))


@pytest.mark.parametrize("mode", ["sum", "token"])
def test_training_run_reads_user_features_and_serves_with_attributes(tmp_path, synthetic_csv, capsys, mode):
    """A whole run: attributes from a CSV beside the log, stated in the protocol, the vocabulary
    saved in the checkpoint; eval and the Recommender map attributes with it."""
    from genrec.cli import main
    from genrec.recommender import Recommender

    users = tmp_path / "users.csv"
    users.write_text("user_id,group,age\n" + "".join(f"u{k},{'even' if k % 2 == 0 else 'odd'},{20 + k % 7}\n" for k in range(60)))
    cfg = {
        "data": {"dataset": "custom", "source": str(synthetic_csv), "cache_dir": str(tmp_path / "cache"), "user_features": str(users),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "sasrec", "max_seq_len": 10, "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.0,
                  "user_features": mode},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "num_negatives": 8, "num_threads": 1, "device": "cpu",
                  "precision": "fp32", "pack": mode != "token"},
        "eval": {"ks": [1, 10]},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any(f"user features ({mode})" in n and "60 of 60 users" in n for n in metrics["protocol"]["notes"])
    assert "60 of 60 users have any" in metrics["protocol"]["user_attributes"]
    assert main(["eval", str(tmp_path / "run" / "best")]) == 0
    rec = Recommender.load(tmp_path / "run" / "best")
    assert rec.reads_user_attributes and "group=even" in rec.user_attribute_vocabulary
    one = rec.recommend(["i3", "i4"], k=5, user_attributes=["group=even"])
    assert rec.recommend(["i3", "i4"], k=5, user_attributes={"group": "even"}) == one
    wide = ["group=even", "group=odd", "age=q1", "age=q7"]  # more tokens than any user had: a wider row
    batched = rec.recommend_many([rec.query(["i3", "i4"], user_attributes=["group=even"]), rec.query(["i3"]),
                                  rec.query(["i5"], user_attributes=wide)], k=5)
    assert [i for i, _ in batched[0]] == [i for i, _ in one]
    assert [i for i, _ in batched[2]] == [i for i, _ in rec.recommend(["i5"], k=5, user_attributes=wide)]
    assert [i for i, _ in batched[1]] == [i for i, _ in rec.recommend(["i3"], k=5)]
    numeric = rec.model.config.user_numeric_fields["age"]  # the age column was numeric: its deciles travel with the model
    assert len(numeric) == 9 and rec.recommend(["i3"], k=5, user_attributes={"group": "even", "age": 23}) == rec.recommend(
        ["i3"], k=5, user_attributes=["group=even", f"age=q{int(np.searchsorted(numeric, 23, side='right'))}"])
    with pytest.raises(ValueError, match="unknown user attribute"):
        rec.recommend(["i3"], user_attributes=["group=blue"])
    assert len(rec.recommend(["i3"], user_attributes=["group=blue"], ignore_unknown=True)) == 10
    users.write_text("user_id,group\n" + "".join(f"u{k},g{k % 3}\n" for k in range(60)))  # another file: another vocabulary
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "best")]) != 0
    assert "vocabulary differs from the one it was trained with" in capsys.readouterr().err


def test_a_model_without_user_features_refuses_attributes():
    from genrec.models import SASRec, SASRecConfig
    from genrec.recommender import Recommender

    rec = Recommender(SASRec(SASRecConfig(num_items=3, embedding_dim=8)), ["a", "b", "c"])
    assert not rec.reads_user_attributes and rec.user_attribute_vocabulary == []
    with pytest.raises(ValueError, match="reads no user attributes"):
        rec.recommend(["a"], user_attributes=["gender=F"])


def test_movielens_demographics_from_shared_data():
    got = read_user_features(shared_file("ml-100k/u.user.gz"))
    assert len(got) == 943 and all(len(t) in (3, 4) for t in got.values())
    assert {t for toks in got.values() for t in toks if t.startswith("age=")} == {
        "age=under-18", "age=18-24", "age=25-34", "age=35-44", "age=45-49", "age=50-55", "age=56+"}
    got = read_user_features(shared_file("ml-1m/users.dat.gz"))
    assert len(got) == 6040 and got["1"] == ["age=under-18", "gender=F", "occupation=10", "zip=4"]


def test_distillation_reads_user_attributes_for_teacher_and_student(tmp_path, synthetic_csv):
    from genrec.cli import main

    users = tmp_path / "users.csv"
    users.write_text("user_id,group\n" + "".join(f"u{k},{'even' if k % 2 == 0 else 'odd'}\n" for k in range(60)))
    cfg = {
        "data": {"dataset": "custom", "source": str(synthetic_csv), "cache_dir": str(tmp_path / "cache"), "user_features": str(users),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "sasrec", "max_seq_len": 10, "embedding_dim": 16, "num_layers": 2, "num_heads": 2, "dropout": 0.0,
                  "user_features": "sum"},
        "train": {"epochs": 1, "batch_size": 16, "num_negatives": 8, "num_threads": 1, "device": "cpu", "precision": "fp32"},
        "eval": {"ks": [10]},
    }
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "teacher.yaml"), "--out", str(tmp_path / "teacher")]) == 0
    teacher = str(tmp_path / "teacher" / "best")
    # a student with user features, and one without (the teacher still reads them)
    for name, student_features in (("with", "sum"), ("without", "none")):
        cfg["model"].update(num_layers=1, user_features=student_features)
        cfg["distill"] = {"blocks": 1, "supervision_weight": 0.0}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["distill", str(tmp_path / f"{name}.yaml"), "--teacher", teacher, "--out", str(tmp_path / name)]) == 0
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert 0 <= metrics["test"]["ndcg@10"] <= 1 and metrics["teacher"]["test"]["ndcg@10"] > 0
