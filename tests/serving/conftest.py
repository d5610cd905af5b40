"""Fixtures of the service tests: tiny checkpoints trained through the CLI once per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

SERVE_MISSING = [m for m in ("fastapi", "uvicorn", "prometheus_client", "httpx", "orjson") if importlib.util.find_spec(m) is None]
SKIP_REASON = f"the serve extra is not installed ({', '.join(SERVE_MISSING)} missing): pip install 'genrec[serve]'"


def _train(tmp: Path, csv: Path, name: str, model: dict, task: dict | None = None) -> Path:
    from genrec.cli import main

    cfg = {
        "data": {"dataset": "custom", "source": str(csv), "format": "csv", "cache_dir": str(tmp / "cache"),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "rating": "stars"}},
        "model": {"name": "hstu", "embedding_dim": 16, "num_layers": 1, "num_heads": 2, **model},
        "train": {"epochs": 2, "batch_size": 16, "num_negatives": 8, "lr": 0.01, "patience": 0, "num_threads": 1},
    }
    if task:
        cfg["task"] = task
        cfg["eval"] = {"ks": [1, 10], "holdout": 2, "select_metric": "ndcg@10+auc"}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp / name)]) == 0
    return tmp / name / "best"


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Trained through ``genrec train``: ``retrieval`` (HSTU, time bias, 6-item window) and
    ``unified`` (interleaved HSTU: retrieval + a ``like`` ranking head); ``rated`` (the same with
    like and the rating itself as two tasks, ``task.regression_actions: [rating]``); ``other`` (the retrieval
    model with other weights, for reloads); ``ranking`` (an untrained DIN: ranking only);
    ``metadata`` (a CSV of titles for the synthetic items)."""
    import conftest

    from genrec.checkpoint import fill_model, load_model, write_atomic_dir
    from genrec.models import DIN, DINConfig

    tmp = tmp_path_factory.mktemp("serve")
    csv = tmp / "log.csv"
    rows = conftest.synthetic_log()
    csv.write_text("user_id,item_id,ts,stars\n" + "\n".join(f"{u},{i},{t},{r}" for u, i, t, r in rows) + "\n")
    out = {
        "retrieval": _train(tmp, csv, "retrieval", {"max_seq_len": 6, "time_bias": True}),
        "unified": _train(tmp, csv, "unified", {"max_seq_len": 10, "time_bias": True}, {"kind": "unified"}),
        "rated": _train(tmp, csv, "rated", {"max_seq_len": 10, "time_bias": True}, {"kind": "unified", "regression_actions": ["rating"]}),
    }
    model, items, experiment = load_model(out["retrieval"])
    with torch.no_grad():
        model.item_embedding.weight.mul_(-1.0)  # same shapes, other answers
    out["other"] = tmp / "other" / "best"
    write_atomic_dir(out["other"], lambda f: fill_model(f, model, items, experiment))
    din = DIN(DINConfig(num_items=len(items), max_seq_len=4, embedding_dim=8))
    out["ranking"] = tmp / "ranking" / "best"
    write_atomic_dir(out["ranking"], lambda f: fill_model(f, din, items, {"task": {"kind": "ranking"}}))
    out["metadata"] = tmp / "titles.csv"
    out["metadata"].write_text("item_id,title,colour\n" + "".join(f"i{k},Step {k} of the walk,c{k % 3}\n" for k in range(40)))
    return out


@pytest.fixture(scope="session")
def profiled_domains(tmp_path_factory) -> Path:
    """A multi-domain SASRec (domains ``beauty`` and ``toys``, walks a0 -> a1 ... and b0 -> b1 ...)
    that reads each user's attributes (``group``, ``age``; sum): its ``best`` folder."""
    from genrec.cli import main

    tmp = tmp_path_factory.mktemp("profiled")
    rng = np.random.default_rng(0)
    a, b, users = tmp / "beauty.csv", tmp / "toys.csv", tmp / "users.csv"
    a.write_text("user_id,item_id\n" + "".join(f"u{u},a{(s + i) % 15}\n" for u in range(30) for s in [int(rng.integers(15))] for i in range(6)))
    b.write_text("user_id,item_id\n" + "".join(f"u{u},b{(s + i) % 12}\n" for u in range(20, 50) for s in [int(rng.integers(12))] for i in range(6)))
    users.write_text("user_id,group,age\n" + "".join(f"u{k},{'even' if k % 2 == 0 else 'odd'},{20 + k % 7}\n" for k in range(50)))
    cfg = {
        "data": {"domains": [str(a), str(b)], "cache_dir": str(tmp / "cache"), "user_features": str(users)},
        "model": {"name": "sasrec", "max_seq_len": 8, "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.0,
                  "behaviour_embedding": True, "user_features": "sum"},
        "train": {"epochs": 2, "batch_size": 16, "num_negatives": 8, "lr": 0.01, "patience": 0, "num_threads": 1,
                  "device": "cpu", "precision": "fp32"},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp / "cfg.yaml"), "--out", str(tmp / "run")]) == 0
    return tmp / "run" / "best"
