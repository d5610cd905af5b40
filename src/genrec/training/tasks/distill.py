"""Layer-aligned distillation (SLMRec, PAPERS.md §4): a frozen deep teacher guides a shallow student.

Teacher of M layers, student of N, B blocks (``distill.blocks``): block k = 1..B aligns teacher
layer k·M/B with student layer k·N/B (layer l = the residual stream leaving the l-th layer, see
:meth:`~genrec.models.base.SequentialRecommender.encode_layers`). At the compared positions
(``distill.positions``: each sequence's last token, or every position with a target):

    loss = train.loss(student)                                          the usual retrieval loss
         + λ1 Σ_k mean(1 − cos(h_t^k, P_k h_s^k))                       cosine_weight
         + λ2 Σ_k mean ‖h_t^k − P_k h_s^k‖²                             l2_weight
         + λ3 Σ_{k<B} train.loss(norm(A_k h_s^k))                       supervision_weight
         + λ4 τ² KL(softmax(z_t / τ) ‖ softmax(z_s / τ))                    logit_weight, logit_temperature

λ4 is genrec's addition, off by default (the paper distils features only): z_t and z_s are each
model's scores over the whole catalogue at the compared positions (query · item vectors / that
model's ``train.temperature``; the teacher's is read from its checkpoint), and τ softens both
(Hinton et al.'s knowledge distillation; τ² keeps the gradient's scale). In fp32, outside any
autocast. It holds about four [T, num_items] fp32 matrices for T compared positions until the
backward pass; it spans every domain of multi-domain data, and is refused with the cold-item
check (it would train the held-out items).

P_k: a learned linear projection from the student's width to the teacher's (only when they
differ); A_k: a linear adapter to the student's output space, whose vectors are scored against
the student's item vectors with the same loss, at every position with a target (block B is the
student's own output, already under the first term; as the official code, adapters sit at blocks
1..B-1). Each term is logged per step (``steps.jsonl``). Nothing falls back silently: a block
count that does not divide both depths, a weight whose inputs do not exist (λ3 with B = 1), a
teacher on another catalogue or of another family is an error.

Deviation from the official code: the L2 term is the squared distance (as the paper writes it);
the code uses the distance itself.

What the trainer optimises is a :class:`DistillationModel` (the student + the projections and
adapters); the task holds the teacher, frozen and in eval mode, outside that module, so the
teacher is never saved, never put in train mode and never handed to the optimiser.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genrec import checkpoint as ckpt
from genrec.data.batches import TrainBatch
from genrec.data.prepare import SequenceData
from genrec.errors import ConfigError
from genrec.models import SequentialRecommender
from genrec.models.base import history_length
from genrec.training.losses import positions_loss
from genrec.training.tasks.retrieval import RetrievalTask

FAMILIES = {"hstu": "hstu", "sasrec": "sasrec", "gpt": "gpt", "llama": "llama", "hf_llama": "llama"}
"""Backbone -> architecture family: a teacher and its student must share one (a genrec Llama may
learn from a Hugging Face Llama)."""


def aligned_layers(teacher_layers: int, student_layers: int, blocks: int) -> list[tuple[int, int]]:
    """(teacher layer, student layer) of blocks k = 1..B: (k·M/B, k·N/B), layers counted from 1."""
    M, N, B = teacher_layers, student_layers, blocks
    if M % B or N % B:
        both = [b for b in range(1, min(M, N) + 1) if M % b == 0 and N % b == 0]
        raise ConfigError(f"distill.blocks={B} must divide the teacher's {M} layers and the student's {N} "
                          f"(block k aligns layer k·{M}/{B} with k·{N}/{B}); choose one of {both}")
    return [(k * M // B, k * N // B) for k in range(1, B + 1)]


def compared_positions(batch: TrainBatch, positions: str) -> torch.Tensor:
    """[B, N] bool: where teacher and student states are compared: ``all`` positions with a
    target, or the ``last`` one of each sequence (of each packed sequence with ``segments``)."""
    has = batch.targets != 0
    if positions == "all":
        return has
    seq = has.long() if batch.segments is None else batch.segments * has  # [B N] sequence id, 0 = none
    following = torch.cat([seq[:, 1:], torch.zeros_like(seq[:, :1])], dim=1)
    return has & (following != seq)


def cosine_term(h_t: torch.Tensor, h_s: torch.Tensor) -> torch.Tensor:
    """h_t, h_s [T, W] -> mean over T of 1 − cos(h_t, h_s)."""
    return (1.0 - F.cosine_similarity(h_s.float(), h_t.float(), dim=-1, eps=1e-8)).mean()


def l2_term(h_t: torch.Tensor, h_s: torch.Tensor) -> torch.Tensor:
    """h_t, h_s [T, W] -> mean over T of ‖h_t − h_s‖²."""
    return (h_s.float() - h_t.float()).pow(2).sum(-1).mean()


class DistillHeads(nn.Module):
    """What distillation trains besides the student: per-block projections (student width ->
    teacher width; none when the widths agree) and the multi-supervision adapters (blocks 1..B-1)."""

    def __init__(self, blocks: int, student_width: int, teacher_width: int, output_dim: int, project: bool, adapters: bool):
        super().__init__()
        n_proj = blocks if project and student_width != teacher_width else 0
        self.projections = nn.ModuleList(nn.Linear(student_width, teacher_width, bias=False) for _ in range(n_proj))
        self.adapters = nn.ModuleList(nn.Linear(student_width, output_dim, bias=False) for _ in range(blocks - 1 if adapters else 0))

    def project(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Block k's student state [..., W_s] in the teacher's width [..., W_t]."""
        return self.projections[k](h) if len(self.projections) else h


class DistillationModel(nn.Module):
    """The module the trainer optimises and checkpoints during distillation: ``student`` + ``heads``.
    Its ``config`` is the student's, so a checkpoint's ``model.json`` describes the student;
    :func:`genrec.experiments.distill.export_student` rewrites ``best/`` with the student alone."""

    def __init__(self, student: SequentialRecommender, heads: DistillHeads):
        super().__init__()
        self.student, self.heads = student, heads

    @property
    def config(self):
        return self.student.config

    def compile_backbone(self, compile_fn) -> bool:
        return self.student.compile_backbone(compile_fn)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """The wrapper's state (``last/``), or the student's alone (an exported ``best/``; the heads
        keep their weights: resuming a finished run tests the exported student again)."""
        if state_dict and not any(k.startswith("student.") for k in state_dict):
            return self.student.load_state_dict(state_dict, strict, assign)
        return super().load_state_dict(state_dict, strict, assign)


def load_teacher(path: str | Path, data: SequenceData) -> tuple[SequentialRecommender, float | None]:
    """(teacher, its training temperature or None when its checkpoint records none): the
    checkpoint, frozen and in eval mode, checked to be a sequence retrieval model over exactly the
    catalogue of ``data`` (same raw item ids in the same order)."""
    teacher, item_ids, experiment = ckpt.load_model(path)
    if not isinstance(teacher, SequentialRecommender):
        raise ConfigError(f"distill.teacher={str(path)!r} is a {type(teacher).__name__}; the teacher must be a retrieval "
                          "backbone checkpoint (hstu, sasrec, gpt, llama, hf_llama)")
    if list(item_ids) != list(data.item_ids):
        same = sum(a == b for a, b in zip(item_ids, data.item_ids))
        raise ConfigError(f"distill.teacher={str(path)!r} was trained on another catalogue: {len(item_ids)} items, the "
                          f"student's data {data.num_items} ({same} ids agree in place); distil on the teacher's data")
    if teacher.reads_user_attributes and list(teacher.config.user_attributes) != list(data.user_vocabulary):
        raise ConfigError(f"distill.teacher={str(path)!r} reads user attributes: " + (
            "the data's user attribute vocabulary differs from the teacher's (another data.user_features file?)"
            if data.user_tokens is not None else "set data.user_features to the teacher's file"))
    teacher.requires_grad_(False)
    return teacher.eval(), (experiment.get("train") or {}).get("temperature")


class DistillTask(RetrievalTask):
    """Retrieval training of the student (its batches, loss and evaluation are the retrieval
    task's) plus the distillation terms. Built by :func:`genrec.training.tasks.build_task` without
    a teacher it only evaluates (``genrec eval`` of a student); ``genrec distill`` gives it one."""

    def __init__(self, cfg, data: SequenceData, teacher: SequentialRecommender | None = None,
                 teacher_temperature: float | None = None):
        super().__init__(cfg, data)
        if cfg.model.name not in FAMILIES:
            raise ConfigError(f"model.name={cfg.model.name!r} has no layers to distil into; use one of {sorted(FAMILIES)}")
        self.teacher, self.pairs = teacher, []
        self.widths: tuple[int, int] | None = None  # (student, teacher) hidden widths, once the student is built
        d = cfg.distill
        if not (d.cosine_weight or d.l2_weight or d.supervision_weight or d.logit_weight):
            raise ConfigError("distill: cosine_weight, l2_weight, supervision_weight and logit_weight are all 0, so this is "
                              "plain retrieval training; train it with `genrec train` (no teacher)")
        if d.supervision_weight and d.blocks < 2:
            raise ConfigError(f"distill.supervision_weight={d.supervision_weight} needs distill.blocks >= 2: the adapters sit "
                              "at blocks 1..B-1 (block B is the student's own output)")
        if teacher is not None:
            self._check_teacher(teacher)
            self.pairs = aligned_layers(teacher.config.num_layers, self.model_config.num_layers, d.blocks)
            if d.logit_weight and not (teacher_temperature and teacher_temperature > 0):
                raise ConfigError(f"distill.logit_weight={d.logit_weight} needs the teacher's training temperature "
                                  f"(train.temperature in its experiment.json), got {teacher_temperature!r}")
        self.teacher_temperature = teacher_temperature

    def _check_teacher(self, teacher: SequentialRecommender) -> None:
        student = self.model_config
        t_name, s_name = teacher.config.name, student.name
        if FAMILIES.get(t_name) != FAMILIES.get(s_name):
            raise ConfigError(f"model.name={s_name!r} cannot learn layer by layer from a {t_name!r} teacher: use the "
                              f"teacher's family ({[n for n, f in FAMILIES.items() if f == FAMILIES.get(t_name)]})")
        if student.num_layers > teacher.config.num_layers:
            raise ConfigError(f"model.num_layers={student.num_layers}: the student is deeper than its "
                              f"{teacher.config.num_layers}-layer teacher")
        if teacher.config.user_features == "token" and self.cfg.train.pack:
            raise ConfigError("the teacher reads a profile token (model.user_features=token), which needs padded rows: "
                              "set train.pack=false")
        if teacher.max_history < history_length(student):
            raise ConfigError(f"the student reads {history_length(student)} items (model.max_seq_len={student.max_seq_len}), "
                              f"more than the teacher's {teacher.max_history}")

    # ---- the Task members ---------------------------------------------------------------------
    def build_model(self) -> DistillationModel:
        if self.teacher is None:
            raise ConfigError("distill.teacher is set: distillation trains through `genrec distill CONFIG --teacher CKPT` "
                              "(which saves the student alone as best/), not `genrec train`")
        student = super().build_model()
        d = self.cfg.distill
        self.widths = (student.layer_width, self.teacher.layer_width)
        heads = DistillHeads(d.blocks, student.layer_width, self.teacher.layer_width, student.config.embedding_dim,
                             project=bool(d.cosine_weight or d.l2_weight), adapters=bool(d.supervision_weight))
        return DistillationModel(student, heads)

    def loss(self, model: DistillationModel, batch: TrainBatch, epoch: int) -> tuple[torch.Tensor, dict]:
        d, t, student = self.cfg.distill, self.cfg.train, model.student
        h, states = student.encode_layers(batch.items, batch.timestamps, batch.query_timestamps, batch.segments, batch.behaviours,
                                          batch.user_tokens)  # [B N D], N_s x [B N W]
        has = batch.targets != 0
        pos = batch.targets[has]  # [T]
        main = positions_loss(h[has], pos, student, t, self.never_negative(pos.device), self.negative_ranges(pos.device))
        total, logs = main, {"retrieval_loss": float(main.detach())}
        if d.cosine_weight or d.l2_weight or d.logit_weight:
            where = compared_positions(batch, d.positions)
            h_t, t_states = self._teacher_states(batch)
        if d.cosine_weight or d.l2_weight:
            cos, l2 = self.feature_terms(model, states, t_states, where)
            total = total + d.cosine_weight * cos + d.l2_weight * l2
            logs.update(distill_cosine=float(cos.detach()), distill_l2=float(l2.detach()))
        if d.logit_weight:
            kd = self.logit_term(student, h[where], h_t[where])
            total = total + d.logit_weight * kd
            logs["distill_logits"] = float(kd.detach())
        if d.supervision_weight:
            sup = self.supervision_term(model, states, has, pos)
            total = total + d.supervision_weight * sup
            logs["distill_supervision"] = float(sup.detach())
        logs["total_loss"] = float(total.detach())
        return total, logs

    def feature_terms(self, model: DistillationModel, s_states: list[torch.Tensor], t_states: list[torch.Tensor],
                      where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ_k cosine term, Σ_k L2 term) over the aligned blocks at the ``where`` [B, N] positions."""
        cos = l2 = torch.zeros((), device=where.device)
        for k, (lt, ls) in enumerate(self.pairs):
            h_t, h_s = t_states[lt - 1][where], model.heads.project(k, s_states[ls - 1][where])  # [T W_t]
            cos, l2 = cos + cosine_term(h_t, h_s), l2 + l2_term(h_t, h_s)
        return cos, l2

    def supervision_term(self, model: DistillationModel, s_states: list[torch.Tensor], has: torch.Tensor,
                         pos: torch.Tensor) -> torch.Tensor:
        """Σ_{k<B} train.loss of adapter k's query vectors (block k's student state mapped to the
        output space, normalised as the student's) at every position with a target."""
        student, t = model.student, self.cfg.train
        total = torch.zeros((), device=pos.device)
        for adapter, (_, ls) in zip(model.heads.adapters, self.pairs):
            q = adapter(s_states[ls - 1][has])  # [T D]
            if student.config.l2_normalize:
                q = F.normalize(q, dim=-1, eps=1e-6)
            total = total + positions_loss(q, pos, student, t, self.never_negative(pos.device), self.negative_ranges(pos.device))
        return total

    def logit_term(self, student: SequentialRecommender, q_s: torch.Tensor, q_t: torch.Tensor) -> torch.Tensor:
        """τ² KL(softmax(z_t/τ) ‖ softmax(z_s/τ)), averaged over the T rows of ``q_s``/``q_t`` [T, D]
        (student and teacher query vectors), z = q · item vectors (items 1..I) / the model's
        training temperature."""
        tau = self.cfg.distill.logit_temperature
        with torch.autocast(q_s.device.type, enabled=False):  # fp32 scores even under bf16 training
            with torch.no_grad():
                z_t = (q_t.float() @ self.teacher.item_vectors(start=1).float().T) / (self.teacher_temperature * tau)  # [T I]
            z_s = (q_s.float() @ student.item_vectors(start=1).float().T) / (self.cfg.train.temperature * tau)
            kl = F.kl_div(F.log_softmax(z_s, dim=-1), F.log_softmax(z_t, dim=-1), reduction="batchmean", log_target=True)
        return kl * tau * tau

    @torch.no_grad()
    def _teacher_states(self, batch: TrainBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The teacher's output (query vectors) [B N D] and its layers' states, N_t x [B N W]."""
        teacher = self.teacher
        if teacher.item_embedding.weight.device != batch.items.device:
            teacher.to(batch.items.device)
        h_t, states = teacher.encode_layers(batch.items, batch.timestamps, batch.query_timestamps, batch.segments, batch.behaviours,
                                            batch.user_tokens)
        if len(states) != teacher.config.num_layers:
            raise RuntimeError(f"the {teacher.config.name} teacher returned {len(states)} layer states for "
                               f"{teacher.config.num_layers} layers")
        return h_t, states

    def evaluate(self, model, split: str, device) -> dict:
        return super().evaluate(model.student if isinstance(model, DistillationModel) else model, split, device)

    def describe(self) -> dict:
        d = self.cfg.distill
        info = {"teacher": d.teacher, "blocks": d.blocks, "positions": d.positions,
                "weights": {"cosine": d.cosine_weight, "l2": d.l2_weight, "supervision": d.supervision_weight,
                            "logits": d.logit_weight}}
        if d.logit_weight:
            info.update(logit_temperature=d.logit_temperature, teacher_temperature=self.teacher_temperature)
        if self.teacher is not None:
            info.update(teacher_model=self.teacher.config.name, aligned_layers=[list(p) for p in self.pairs])
        if self.widths:
            (w_s, w_t), projected = self.widths, d.cosine_weight or d.l2_weight
            info["projection"] = f"learned linear per block, {w_s} -> {w_t}" if projected and w_s != w_t else "none"
        return {**super().describe(), "distillation": info}


def parameter_counts(model: SequentialRecommender) -> dict[str, int]:
    """Total, non-embedding (total minus item/position tables) and trainable parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "non_embedding": total - model.embedding_parameters(), "trainable": trainable}
