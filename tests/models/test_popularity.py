"""The built-in popularity baseline: scores are training counts, evaluated like every model."""

import json

import torch
import yaml

from genrec.cli import main
from genrec.models import Popularity, PopularityConfig, Retriever


def test_scores_are_log_counts_and_topk_excludes():
    model = Popularity(PopularityConfig(num_items=4))
    model.fit_counts(torch.tensor([[1, 2, 2, 0], [3, 2, 3, 0]]))  # counts: 1 -> 1, 2 -> 3, 3 -> 2, 4 -> 0
    assert isinstance(model, Retriever)
    user = model.user_vectors(torch.tensor([[1, 0]]))
    assert torch.allclose(model.score_items(user)[0], torch.log1p(torch.tensor([1.0, 3.0, 2.0, 0.0])))
    scores, ids = model.topk(user, 3, exclude=torch.tensor([[2]]))
    assert ids[0].tolist() == [3, 1, 4]
    _, ids = model.topk(user, 3, exclude=torch.tensor([[2]]), start=2, end=4)  # ids 2 and 3 only
    assert ids[0].tolist() == [3, 2]  # the excluded id fills the tail at -inf, as the full scan does
    assert model.score_candidates(user, torch.tensor([[4, 2]]))[0].tolist() == [0.0, float(torch.log1p(torch.tensor(3.0)))]


def test_popularity_run_counts_training_items_only(tmp_path, capsys):
    # user a: x x y | valid z | test z ; user b: x y | valid y | test y -> training counts x:3, y:2, z:0
    rows = ["user,item,ts"] + [f"a,{i},{t}" for t, i in enumerate("xxyzz")] + [f"b,{i},{t}" for t, i in enumerate("xyyy")]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    cfg = {"data": {"dataset": "custom", "source": str(tmp_path / "log.csv"), "format": "csv", "cache_dir": str(tmp_path / "c"),
                    "columns": {"user": "user", "item": "item", "timestamp": "ts"}},
           "model": {"name": "popularity"}, "eval": {"ks": [1, 2], "exclude_history": "none", "select_metric": "ndcg@2"}}
    (tmp_path / "pop.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "pop.yaml"), "--out", str(tmp_path / "run")]) == 0
    result = json.loads(capsys.readouterr().out)
    # ranking x (3) > y (2) > z (0): a's target z ranks 3rd (hr@1 = hr@2 = 0), b's target y 2nd
    assert result["valid"]["hr@1"] == 0.0 and result["valid"]["hr@2"] == 0.5
    assert result["best_epoch"] == 0 and "popularity" in result["protocol"]["loss"]
    assert main(["recommend", str(tmp_path / "run" / "best"), "--history", "z", "--keep-history", "-k", "2"]) == 0
    assert [r["item"] for r in json.loads(capsys.readouterr().out)["items"]] == ["x", "y"]
