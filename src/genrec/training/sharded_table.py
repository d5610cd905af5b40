"""Row-wise sharded item tables through TorchRec (``train.item_table: rowwise``).

For catalogues whose item table does not fit one device, the rows are split across the
``torchrun`` processes: rank r holds a contiguous block of rows, and every lookup sends each id
to the rank that owns it and the vector back (TorchRec's row-wise sharding, one all-to-all each
way). The table is updated inside the backward pass by FBGEMM's fused optimizer
(``train.table_optimizer``); the rest of the model trains data-parallel with AdamW as usual.
TorchRec averages the table's gradient over ranks, as DDP does for the dense weights, so a run
on N processes follows one process with the same global batch and the same table optimizer.

What stays whole: evaluation and checkpoints. Before validation and before every checkpoint the
rows (and the table optimizer's state) are gathered into rank 0's host memory, so checkpoints have
the same format as unsharded runs (``genrec eval``/``recommend`` load them unchanged) and rank 0
evaluates over the full catalogue. A catalogue too large for one host would need sharded scoring
too; that is not built.

TorchRec is optional: genrec imports it only when a run asks for ``rowwise``. It needs an FBGEMM
build matching the installed torch (README, "Sharded item tables").
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import ConfigError

TABLE = "item_table"
"""The TorchRec table name (``items`` would clash with ModuleDict.items)."""
WEIGHT = f"{TABLE}.weight"
"""Key of the rows in what :meth:`ShardedItemTable.gather` returns (beside the optimizer state)."""
MODEL_KEY = "item_embedding.weight"
"""Where the whole table sits in a checkpoint: the unsharded model's name for it."""

OPTIMIZERS = ("rowwise_adagrad", "sgd")
"""Fused table optimizers offered: FBGEMM's CPU kernels support these two (Adam is CUDA-only there)."""


def require_torchrec():
    """Import TorchRec, or explain how to install it."""
    try:
        import torchrec  # noqa: F401
        from fbgemm_gpu.split_embedding_configs import EmbOptimType  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken binary install raises ImportError, OSError or RuntimeError
        raise ConfigError(
            f"train.item_table=rowwise needs TorchRec and an FBGEMM build matching torch {torch.__version__} "
            f"(README, 'Sharded item tables'); importing it failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from exc


def torchrec_available() -> bool:
    try:
        require_torchrec()
    except ConfigError:
        return False
    return True


class ShardedItemTable(nn.Module):
    """Drop-in for the model's ``item_embedding`` (an ``nn.Embedding`` with padding row 0) whose
    rows live in a TorchRec EmbeddingCollection, row-wise sharded once :func:`shard` has run.

    ``forward(ids)`` looks ids up through the shards (a collective: every rank must call it the same
    number of times per step, which the shared training loop guarantees). ``weight`` is the
    whole table: during training a lookup of every row (what a full-softmax loss reads); outside
    training, the copy :meth:`gather` assembled on rank 0 for evaluation and checkpoints.
    Id 0 (padding) always maps to a zero vector and receives no gradient."""

    def __init__(self, table: nn.Embedding):
        super().__init__()
        from torchrec import EmbeddingCollection, EmbeddingConfig

        self.num_embeddings, self.embedding_dim = table.num_embeddings, table.embedding_dim
        config = EmbeddingConfig(name=TABLE, embedding_dim=self.embedding_dim, num_embeddings=self.num_embeddings, feature_names=["item"])
        self.ec = EmbeddingCollection(tables=[config], device=torch.device("meta"))
        self.initial = table.weight.detach().cpu().clone()  # copied into the shards by shard(), then dropped
        self.full: torch.Tensor | None = None
        self.device = torch.device("cpu")  # where lookups run; set by shard()

    def _lookup(self, flat: torch.Tensor) -> torch.Tensor:
        from torchrec import KeyedJaggedTensor

        lengths = torch.tensor([flat.numel()], dtype=torch.int64, device=flat.device)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["item"], values=flat, lengths=lengths)
        return self.ec(kjt)["item"].values()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.full is not None:
            return F.embedding(ids, self.full, padding_idx=0)
        if not self.training:
            raise RuntimeError("the sharded item table is assembled on rank 0 only for evaluation; call gather() first")
        flat = ids.reshape(-1)
        out = self._lookup(flat) * (flat != 0).unsqueeze(1)
        return out.view(*ids.shape, self.embedding_dim)

    @property
    def weight(self) -> torch.Tensor:
        if self.full is not None:
            return self.full
        return self(torch.arange(self.num_embeddings, device=self.device))

    # ---- rows and optimizer state -----------------------------------------------------------
    def _weight_shards(self):
        return {WEIGHT: self.ec.state_dict()[f"embeddings.{TABLE}.weight"]}

    def _optimizer_shards(self, fused_optimizer) -> dict:
        """name -> ShardedTensor of the fused optimizer's per-row state (empty for SGD)."""
        out = {}
        for states in fused_optimizer.state_dict()["state"].values():
            for name, value in states.items():
                if hasattr(value, "local_shards"):
                    out[name] = value
        return out

    def _gather(self, sharded, rank: int) -> torch.Tensor | None:
        """Collective: the whole tensor on rank 0 (moved to host memory), None elsewhere.
        (NCCL gathers into device memory, so rank 0's device holds it briefly.)"""
        with warnings.catch_warnings():  # TorchRec still hands out ShardedTensor, which torch marks deprecated
            warnings.simplefilter("ignore", FutureWarning)
            out = torch.empty(tuple(sharded.size()), dtype=sharded.dtype, device=self.device) if rank == 0 else None
            sharded.gather(dst=0, out=out)
        return None if out is None else out.cpu()

    @staticmethod
    def _scatter(sharded, full: torch.Tensor) -> None:
        """Copy this rank's rows of ``full`` into its shards of ``sharded`` (in place)."""
        for shard in sharded.local_shards():
            start, size = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            with torch.no_grad():
                shard.tensor.copy_(full[start : start + size].to(shard.tensor.device, shard.tensor.dtype))

    def gather(self, rank: int, fused_optimizer) -> dict[str, torch.Tensor]:
        """Collective. Rank 0 receives the table (kept in ``full`` for evaluation) and the table
        optimizer's state as CPU tensors; other ranks get an empty dict."""
        shards = {**self._weight_shards(), **self._optimizer_shards(fused_optimizer)}
        result = {name: self._gather(st, rank) for name, st in sorted(shards.items())}
        if rank != 0:
            return {}
        self.full = result[WEIGHT].to(self.device)
        return result

    def release(self) -> None:
        """Back to sharded lookups (after evaluation / checkpointing)."""
        self.full = None

    def load(self, tensors: dict[str, torch.Tensor], fused_optimizer=None) -> None:
        """Every rank: copy its rows of the table (and, when given, of the optimizer state)."""
        self._scatter(self._weight_shards()[WEIGHT], tensors[WEIGHT])
        if fused_optimizer is not None:
            for name, st in self._optimizer_shards(fused_optimizer).items():
                if name not in tensors:
                    raise ValueError(f"checkpoint has no table optimizer state {name!r} (was it written with another table_optimizer?)")
                self._scatter(st, tensors[name])


def checkpoint_state(model: nn.Module, gathered: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Rank 0, after :meth:`ShardedItemTable.gather`: (the model's weights with the whole table
    under its unsharded name, the table optimizer's state), so every checkpoint has one format."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("item_embedding.")}
    state[MODEL_KEY] = gathered[WEIGHT]
    return state, {k: v for k, v in gathered.items() if k != WEIGHT}


def restore(model: nn.Module, weights: dict[str, torch.Tensor], optimizer_state: dict[str, torch.Tensor], fused_optimizer) -> None:
    """Every rank: load a checkpoint written from :func:`checkpoint_state`. The rest of the model
    loads strictly; the table keeps this rank's rows (and optimizer state) of the whole table."""
    weights = dict(weights)
    table = model.item_embedding
    modules = model._modules
    kept = dict(modules)
    del modules["item_embedding"]  # TorchRec's sharded module rejects a state dict without its ShardedTensor
    try:
        model.load_state_dict({k: v for k, v in weights.items() if k != MODEL_KEY})
    finally:
        modules.clear()
        modules.update(kept)  # same order as before
    table.load({WEIGHT: weights[MODEL_KEY], **optimizer_state}, fused_optimizer)


def unshard(model: nn.Module, rank: int, fused_optimizer) -> None:
    """Collective, after training: rank 0's model gets a plain ``nn.Embedding`` holding the whole
    table again (for the final evaluation); the other ranks keep their shards."""
    table = model.item_embedding
    gathered = table.gather(rank, fused_optimizer)
    table.release()
    if rank == 0:
        plain = nn.Embedding(table.num_embeddings, table.embedding_dim, padding_idx=0)
        with torch.no_grad():
            plain.weight.copy_(gathered[WEIGHT])
        model.item_embedding = plain.to(table.device)


def fused_params(optimizer: str, lr: float) -> dict:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.table_optimizer={optimizer!r}: choose one of {OPTIMIZERS}")
    kind = {"rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "sgd": EmbOptimType.EXACT_SGD}[optimizer]
    params = {"optimizer": kind, "learning_rate": lr}
    if optimizer == "rowwise_adagrad":
        params["eps"] = 1e-8
    return params


def install(model: nn.Module) -> ShardedItemTable:
    """Swap the model's ``item_embedding`` for a :class:`ShardedItemTable` holding the same rows."""
    require_torchrec()
    if model.item_embedding.embedding_dim % 4:
        raise ConfigError(f"train.item_table=rowwise: FBGEMM needs model.embedding_dim to be a multiple of 4 (got {model.item_embedding.embedding_dim})")
    table = ShardedItemTable(model.item_embedding)
    model.item_embedding = table
    return table


def shard(root: nn.Module, table: ShardedItemTable, path: str, world_size: int, device: torch.device,
          optimizer: str, lr: float, find_unused_parameters: bool):
    """Shard ``table`` row-wise across the process group (``path``: its EmbeddingCollection's name
    inside ``root``) and wrap the rest of ``root`` data-parallel. Returns TorchRec's
    DistributedModelParallel, whose forward is ``root``'s."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise
    from torchrec.distributed.types import ShardingPlan

    sharder = EmbeddingCollectionSharder(fused_params=fused_params(optimizer, lr))
    # TorchRec's planner offers row-wise only on CUDA; the sharding itself runs on CPU too, so the
    # plan is written by hand: one table, rows split evenly over the ranks, FBGEMM's fused kernel.
    module_plan = construct_module_sharding_plan(
        table.ec, per_param_sharding={TABLE: row_wise(compute_kernel="fused")}, world_size=world_size,
        device_type=device.type, sharder=sharder,
    )
    wrapped = DistributedModelParallel(
        root, device=device, plan=ShardingPlan({path: module_plan}), sharders=[sharder],
        data_parallel_wrapper=DefaultDataParallelWrapper(find_unused_parameters=find_unused_parameters),
    )
    table.device = device
    table.load({WEIGHT: table.initial})
    table.initial = None
    return wrapped
