"""Layer-aligned distillation (SLMRec): the alignment and every loss term against hand computations,
the width projection, the errors that replace silent fallbacks, and the CLI end to end (teacher ->
distil -> eval -> recommend, resume), for genrec backbones and a tiny Hugging Face Llama teacher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import synthetic_log

from genrec import checkpoint as ckpt
from genrec.cli import main
from genrec.config import ExperimentConfig
from genrec.data.batches import TrainBatch
from genrec.data.prepare import load_prepared, prepare
from genrec.errors import ConfigError
from genrec.models import HSTU, build_model, model_config_from_dict
from genrec.recommender import Recommender
from genrec.training.tasks.distill import (DistillationModel, DistillTask, aligned_layers, compared_positions,
                                           cosine_term, l2_term, load_teacher)


def _raw(csv: Path, cache: Path, layers: int, **distill) -> dict:
    return {
        "data": {"dataset": "custom", "source": str(csv), "format": "csv", "cache_dir": str(cache),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "hstu", "max_seq_len": 10, "embedding_dim": 16, "num_layers": layers, "num_heads": 2, "dropout": 0.0},
        "train": {"epochs": 2, "batch_size": 16, "num_negatives": 8, "lr": 0.01, "patience": 0, "num_threads": 1, "device": "cpu"},
        "eval": {"ks": [1, 10]},
        "distill": distill,
    }


# ---- alignment -----------------------------------------------------------------------------------

def test_aligned_layers_by_hand():
    assert aligned_layers(8, 4, 4) == [(2, 1), (4, 2), (6, 3), (8, 4)]  # the paper's main setting
    assert aligned_layers(4, 2, 2) == [(2, 1), (4, 2)]
    assert aligned_layers(12, 3, 3) == [(4, 1), (8, 2), (12, 3)]
    assert aligned_layers(6, 2, 1) == [(6, 2)]
    with pytest.raises(ConfigError, match=r"distill.blocks=4 must divide .* 8 layers and the student's 2.*\[1, 2\]"):
        aligned_layers(8, 2, 4)
    with pytest.raises(ConfigError, match="distill.blocks=4"):
        aligned_layers(6, 4, 4)


def test_compared_positions_last_and_all():
    items = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    targets = torch.tensor([[4, 5, 9, 0], [7, 8, 0, 0]])
    batch = TrainBatch(items, targets, None, None)
    assert compared_positions(batch, "last").tolist() == [[False, False, True, False], [False, True, False, False]]
    assert compared_positions(batch, "all").tolist() == (targets != 0).tolist()
    packed = TrainBatch(torch.tensor([[3, 4, 6, 7, 8, 0]]), torch.tensor([[4, 5, 7, 8, 9, 0]]), None, None,
                        segments=torch.tensor([[1, 1, 2, 2, 2, 0]]))
    assert compared_positions(packed, "last").tolist() == [[False, True, False, False, True, False]]


def test_feature_terms_by_hand():
    h_t = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    h_s = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert cosine_term(h_t, h_s).item() == pytest.approx((1 - 1 / math.sqrt(2) + 0.0) / 2)
    assert l2_term(h_t, h_s).item() == pytest.approx((1.0 + 1.0) / 2)


# ---- the task's loss -----------------------------------------------------------------------------

@pytest.fixture
def prepared(tmp_path, synthetic_csv):
    return synthetic_csv, tmp_path / "cache", load_prepared(prepare(ExperimentConfig.from_dict(_raw(synthetic_csv, tmp_path / "cache", 2)).data))


def _teacher(data, width=16, layers=4, name="hstu"):
    torch.manual_seed(1)
    cfg = model_config_from_dict({"name": name, "num_items": data.num_items, "max_seq_len": 10, "embedding_dim": width,
                                  "num_layers": layers, "num_heads": 2, "dropout": 0.0})
    return build_model(cfg).eval().requires_grad_(False)


def _task(prepared, teacher, width=8, teacher_temperature=None, **distill):
    csv, cache, data = prepared
    raw = _raw(csv, cache, 2, teacher="unused-path", blocks=2, **distill)
    raw["model"]["embedding_dim"] = width
    raw["train"]["loss"] = "full_softmax"  # deterministic, so the loss can be recomputed by hand
    task = DistillTask(ExperimentConfig.from_dict(raw), data, teacher, teacher_temperature)
    torch.manual_seed(0)
    model = task.build_model()
    return task, model, next(iter(task.batches().epoch(0, 0)))


def _cross_entropy(q, pos, student, temperature=0.05):
    """Full-catalogue softmax cross-entropy, written out."""
    items = F.normalize(student.item_embedding.weight[1:], dim=-1)
    logits = F.normalize(q, dim=-1) @ items.T / temperature
    return -logits.log_softmax(-1)[torch.arange(len(pos)), pos - 1].mean()


def _cos(a, b):
    return 1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def test_loss_is_the_weighted_sum_of_hand_computed_terms(prepared):
    teacher = _teacher(prepared[2], width=16)
    task, model, batch = _task(prepared, teacher, width=8, cosine_weight=0.7, l2_weight=0.2, supervision_weight=0.3)
    loss, logs = task.loss(model, batch, 0)

    student, heads = model.student, model.heads
    assert [tuple(p.weight.shape) for p in heads.projections] == [(16, 8), (16, 8)]  # width 8 -> 16, one per block
    assert [tuple(a.weight.shape) for a in heads.adapters] == [(8, 8)]  # blocks 1..B-1
    with torch.no_grad():
        h, s = student.encode_layers(batch.items, batch.timestamps, batch.query_timestamps)
        _, t = teacher.encode_layers(batch.items, batch.timestamps, batch.query_timestamps)
        has = batch.targets != 0
        lengths = has.sum(1)
        rows = torch.arange(len(lengths))
        pos = batch.targets[has]
        main_loss = _cross_entropy(h[has], pos, student)
        # blocks: teacher layers 2, 4 <- student layers 1, 2; compared at each row's last position
        cos = sum(_cos(t[lt - 1][rows, lengths - 1], s[ls - 1][rows, lengths - 1] @ P.weight.T).mean()
                  for (lt, ls), P in zip([(2, 1), (4, 2)], heads.projections))
        l2 = sum(((t[lt - 1][rows, lengths - 1] - s[ls - 1][rows, lengths - 1] @ P.weight.T) ** 2).sum(-1).mean()
                 for (lt, ls), P in zip([(2, 1), (4, 2)], heads.projections))
        sup = _cross_entropy(s[0][has] @ heads.adapters[0].weight.T, pos, student)
    for key, value in (("retrieval_loss", main_loss), ("distill_cosine", cos), ("distill_l2", l2), ("distill_supervision", sup)):
        assert logs[key] == pytest.approx(value.item(), rel=1e-5), key
    expected = main_loss + 0.7 * cos + 0.2 * l2 + 0.3 * sup
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and logs["total_loss"] == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()  # the projections and adapters learn; the teacher is untouched
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_every_position_compares_every_target(prepared):
    teacher = _teacher(prepared[2], width=8)
    task, model, batch = _task(prepared, teacher, width=8, positions="all", supervision_weight=0.0)
    _, logs = task.loss(model, batch, 0)
    with torch.no_grad():
        _, s = model.student.encode_layers(batch.items, batch.timestamps, batch.query_timestamps)
        _, t = teacher.encode_layers(batch.items, batch.timestamps, batch.query_timestamps)
    has = batch.targets != 0
    cos = sum(_cos(t[lt - 1][has], s[ls - 1][has]).mean() for lt, ls in [(2, 1), (4, 2)])
    assert logs["distill_cosine"] == pytest.approx(cos.item(), rel=1e-5)
    assert len(model.heads.projections) == 0 and len(model.heads.adapters) == 0  # same width; no multi-supervision
    assert "distill_supervision" not in logs


def test_logit_term_by_hand(prepared):
    """λ4 τ² KL(p_t ‖ p_s) over the whole catalogue at the last positions, each model's scores at its
    own training temperature; written out with explicit sums."""
    teacher = _teacher(prepared[2], width=16)
    task, model, batch = _task(prepared, teacher, width=8, teacher_temperature=0.2, cosine_weight=0.0, l2_weight=0.0,
                               supervision_weight=0.0, logit_weight=0.5, logit_temperature=2.0)
    loss, logs = task.loss(model, batch, 0)
    student = model.student
    with torch.no_grad():
        h, _ = student.encode_layers(batch.items, batch.timestamps, batch.query_timestamps)
        h_t, _ = teacher.encode_layers(batch.items, batch.timestamps, batch.query_timestamps)
        has = batch.targets != 0
        lengths = has.sum(1)
        rows = torch.arange(len(lengths))
        main_loss = _cross_entropy(h[has], batch.targets[has], student)
        z_s = F.normalize(h[rows, lengths - 1], dim=-1) @ F.normalize(student.item_embedding.weight[1:], dim=-1).T / (0.05 * 2.0)
        z_t = F.normalize(h_t[rows, lengths - 1], dim=-1) @ F.normalize(teacher.item_embedding.weight[1:], dim=-1).T / (0.2 * 2.0)
        p_t = z_t.exp() / z_t.exp().sum(-1, keepdim=True)
        p_s = z_s.exp() / z_s.exp().sum(-1, keepdim=True)
        kd = 4.0 * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert logs["distill_logits"] == pytest.approx(kd.item(), rel=1e-4)
    assert loss.item() == pytest.approx((main_loss + 0.5 * kd).item(), rel=1e-5)
    assert set(logs) == {"retrieval_loss", "distill_logits", "total_loss"}
    assert len(model.heads.projections) == 0 and len(model.heads.adapters) == 0  # scores only: no heads to train
    assert task.describe()["distillation"]["teacher_temperature"] == 0.2
    with pytest.raises(ConfigError, match="teacher's training temperature"):
        _task(prepared, teacher, logit_weight=1.0)  # a checkpoint that records none: refused, not guessed
    with pytest.raises(ConfigError, match="logit_temperature=0.0 must be"):
        _task(prepared, teacher, teacher_temperature=0.2, logit_weight=1.0, logit_temperature=0.0)
    cold = _raw(prepared[0], prepared[1], 2, teacher="t", blocks=2, logit_weight=1.0)
    cold["data"]["cold_items"] = 0.1
    with pytest.raises(ConfigError, match="held-out items would be trained on"):
        ExperimentConfig.from_dict(cold)


def test_ablation_without_feature_terms_never_runs_the_teacher(prepared):
    teacher = _teacher(prepared[2])

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran although no feature term is on")

    teacher.encode_layers = refuse
    task, model, batch = _task(prepared, teacher, cosine_weight=0.0, l2_weight=0.0, supervision_weight=1.0)
    _, logs = task.loss(model, batch, 0)
    assert set(logs) == {"retrieval_loss", "distill_supervision", "total_loss"}
    assert len(model.heads.projections) == 0


def test_errors_instead_of_silent_fallbacks(prepared):
    data = prepared[2]
    with pytest.raises(ConfigError, match="all 0"):
        _task(prepared, _teacher(data), cosine_weight=0.0, l2_weight=0.0, supervision_weight=0.0)
    with pytest.raises(ConfigError, match="distill.blocks=2 must divide the teacher's 3 layers"):
        _task(prepared, _teacher(data, layers=3))
    with pytest.raises(ConfigError, match="cannot learn layer by layer from a 'sasrec' teacher"):
        _task(prepared, _teacher(data, name="sasrec"))
    with pytest.raises(ConfigError, match="deeper than its 1-layer teacher"):
        _task(prepared, _teacher(data, layers=1))
    raw = _raw(prepared[0], prepared[1], 2, teacher="t", blocks=1, supervision_weight=0.5)
    with pytest.raises(ConfigError, match="needs distill.blocks >= 2"):
        DistillTask(ExperimentConfig.from_dict(raw), data, _teacher(data))
    without_teacher = DistillTask(ExperimentConfig.from_dict(_raw(prepared[0], prepared[1], 2, teacher="t", blocks=2)), data)
    with pytest.raises(ConfigError, match="genrec distill"):
        without_teacher.build_model()  # `genrec train` with a distill section: refused, not plain retrieval


def test_teacher_on_another_catalogue_is_refused(prepared, tmp_path):
    data = prepared[2]
    teacher = _teacher(data)
    other_ids = [f"x{i}" for i in range(data.num_items)]  # same size, other items
    ckpt.write_atomic_dir(tmp_path / "other", lambda f: ckpt.fill_model(f, teacher, other_ids, {}))
    with pytest.raises(ConfigError, match="another catalogue"):
        load_teacher(tmp_path / "other", data)
    ckpt.write_atomic_dir(tmp_path / "same", lambda f: ckpt.fill_model(f, teacher, list(data.item_ids), {}))
    loaded, temperature = load_teacher(tmp_path / "same", data)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert temperature is None  # its experiment.json has no train section
    ckpt.write_atomic_dir(tmp_path / "trained", lambda f: ckpt.fill_model(f, teacher, list(data.item_ids), {"train": {"temperature": 0.07}}))
    assert load_teacher(tmp_path / "trained", data)[1] == 0.07


# ---- end to end through the CLI ------------------------------------------------------------------

def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A 4-layer HSTU teacher trained for 2 epochs on the synthetic log (shared by the CLI tests)."""
    root = tmp_path_factory.mktemp("distill")
    csv = root / "log.csv"
    csv.write_text("user_id,item_id,ts,stars\n" + "".join(f"{u},{i},{t},{r}\n" for u, i, t, r in synthetic_log()))
    assert main(["train", str(_write(root / "teacher.yaml", _raw(csv, root / "cache", 4))), "--out", str(root / "teacher")]) == 0
    return root, csv


def test_cli_distils_a_student_that_is_an_ordinary_checkpoint(teacher_run, capsys):
    root, csv = teacher_run
    cfg = _write(root / "student.yaml", _raw(csv, root / "cache", 2, blocks=2))
    out = root / "student"
    assert main(["distill", str(cfg), "model.embedding_dim=8", "--teacher", str(root / "teacher" / "best"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["distillation"]["aligned_layers"] == [[2, 1], [4, 2]]
    assert metrics["protocol"]["distillation"]["projection"] == "learned linear per block, 8 -> 16"
    assert set(metrics["teacher"]["test"]) >= {"ndcg@10", "hr@10"} and metrics["teacher"]["num_layers"] == 4
    assert metrics["parameters"]["student"]["total"] < metrics["parameters"]["teacher"]["total"]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2 * 4 and all({"retrieval_loss", "distill_cosine", "distill_l2", "distill_supervision"} <= set(s) for s in steps)

    # best/ is the student alone: a plain 2-layer HSTU, the keys of a fresh one, no heads, no teacher
    model, items, experiment = ckpt.load_model(out / "best")
    assert isinstance(model, HSTU) and model.config.num_layers == 2 and model.config.embedding_dim == 8
    saved = ckpt.load_tensors(out / "best" / "model.safetensors")
    assert set(saved) == set(build_model(model.config).state_dict())
    assert json.loads((out / "best" / "model.json").read_text())["num_layers"] == 2
    capsys.readouterr()
    assert main(["eval", str(out / "best")]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == metrics["test"]  # eval reproduces the run's test metrics
    rec = Recommender.load(out / "best")
    top = rec.recommend(["i3", "i4", "i5"], 3, [1_000_000, 1_003_600, 1_007_200])
    assert len(top) == 3 and all(i not in ("i3", "i4", "i5") for i, _ in top)


def test_cli_distillation_resumes_to_the_same_weights(teacher_run):
    root, csv = teacher_run
    teacher = str(root / "teacher" / "best")
    full, part = root / "full", root / "part"
    raw = _raw(csv, root / "cache", 2, blocks=2, positions="all", logit_weight=0.5)  # every term, scores too
    assert main(["distill", str(_write(root / "s2.yaml", raw)), "--teacher", teacher, "--out", str(full)]) == 0
    described = json.loads((full / "metrics.json").read_text())["protocol"]["distillation"]
    assert described["teacher_temperature"] == 0.05 and described["weights"]["logits"] == 0.5  # read from the teacher's run
    assert all("distill_logits" in json.loads(line) for line in (full / "steps.jsonl").read_text().splitlines())
    assert main(["distill", str(root / "s2.yaml"), "train.epochs=1", "--teacher", teacher, "--out", str(part)]) == 0
    assert main(["distill", "train.epochs=2", "--out", str(part), "--resume"]) == 0
    a, b = (ckpt.load_tensors(run / "last" / "model.safetensors") for run in (full, part))
    assert a.keys() == b.keys() and any(k.startswith("heads.") for k in a)  # last/ keeps the heads for resuming
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert json.loads((full / "metrics.json").read_text())["test"] == json.loads((part / "metrics.json").read_text())["test"]


def test_wrapper_loads_its_state_or_the_exported_student(prepared):
    task, model, _ = _task(prepared, _teacher(prepared[2]), width=8)
    other = task.build_model()
    other.load_state_dict(model.state_dict())  # last/: student + heads
    other.load_state_dict(model.student.state_dict())  # an exported best/: the student alone
    assert isinstance(other, DistillationModel) and other.config.num_layers == 2


# ---- the LLM-initialised teacher -----------------------------------------------------------------

@pytest.fixture(scope="module")
def transformers():
    reason = "the LLM teacher needs the optional extra genrec[llm] (transformers, peft)"
    pytest.importorskip("peft", reason=reason)
    return pytest.importorskip("transformers", reason=reason)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, transformers) -> Path:
    """A random 4-layer Llama of width 32 saved with save_pretrained (nothing from the hub)."""
    path = tmp_path_factory.mktemp("llm") / "tiny-llama"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def _hf(path, layers=2, **kw):
    return build_model(model_config_from_dict({"name": "hf_llama", "num_items": 12, "max_seq_len": 8, "embedding_dim": 16,
                                               "num_layers": layers, "pretrained_path": str(path), "dropout": 0.0, **kw}))


def test_hf_llama_needs_a_local_folder(tmp_path, transformers):
    with pytest.raises(ConfigError, match="local path only"):
        _hf(tmp_path / "meta-llama/Llama-2-7b-hf")
    with pytest.raises(ConfigError, match="local path only"):
        _hf("")


def test_hf_llama_keeps_the_first_layers_with_lora_on_the_mlp(tiny_llama, transformers):
    full = transformers.LlamaForCausalLM.from_pretrained(tiny_llama).model
    model = _hf(tiny_llama, layers=2, lora_rank=4)
    assert len(model.llm.layers) == 2
    for mine, theirs in zip(model.llm.layers, full.layers[:2]):
        torch.testing.assert_close(mine.self_attn.q_proj.weight, theirs.self_attn.q_proj.weight)
        torch.testing.assert_close(mine.mlp.gate_proj.base_layer.weight, theirs.mlp.gate_proj.weight)
    trainable = {n.split(".")[0] if not n.startswith("llm.") else "lora" if "lora_" in n else n
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"item_embedding", "input_proj", "output_proj", "lora"}  # LLM and its final norm frozen
    with pytest.raises(ConfigError, match="has only 4 decoder layers"):
        _hf(tiny_llama, layers=5)
    model.eval()
    items = torch.tensor([[3, 4, 5, 0], [6, 7, 8, 9]])
    h, states = model.encode_layers(items)
    assert h.shape == (2, 4, 16) and [s.shape for s in states] == [(2, 4, 32)] * 2 and model.layer_width == 32
    torch.testing.assert_close(model.encode(items[:1, :3]), h[:1, :3])  # causal: padding after a row changes nothing


def test_tiny_llm_teacher_end_to_end(teacher_run, tiny_llama, capsys):
    """Item table from a genrec checkpoint -> LLM teacher (4 layers, LoRA) -> distil a 2-layer LLM
    student -> eval -> recommend."""
    root, csv = teacher_run
    llm = {"name": "hf_llama", "pretrained_path": str(tiny_llama), "item_embeddings": str(root / "teacher" / "best"),
           "lora_rank": 4, "max_seq_len": 10, "embedding_dim": 16, "dropout": 0.0}
    raw = _raw(csv, root / "cache", 4)
    raw["model"] = {**llm, "num_layers": 4}
    raw["train"]["epochs"] = 1
    assert main(["train", str(_write(root / "llm-teacher.yaml", raw)), "--out", str(root / "llm-teacher")]) == 0
    teacher, _, _ = ckpt.load_model(root / "llm-teacher" / "best")
    source = ckpt.load_tensors(root / "teacher" / "best" / "model.safetensors")["item_embedding.weight"]
    torch.testing.assert_close(teacher.item_embedding.weight, source)  # frozen while the teacher trained

    raw["model"] = {**llm, "num_layers": 2}
    raw["distill"] = {"blocks": 2}
    out = root / "llm-student"
    assert main(["distill", str(_write(root / "llm-student.yaml", raw)), "--teacher", str(root / "llm-teacher" / "best"),
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["distillation"]["aligned_layers"] == [[2, 1], [4, 2]]
    assert metrics["teacher"]["model"] == "hf_llama" and "ndcg@10" in metrics["teacher"]["test"]
    model, _, _ = ckpt.load_model(out / "best")
    assert model.config.name == "hf_llama" and len(model.llm.layers) == 2
    capsys.readouterr()
    assert main(["eval", str(out / "best")]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == metrics["test"]
    assert main(["recommend", str(out / "best"), "--history", "i3,i4,i5", "-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3
