"""How a training run executes: one process, data-parallel over processes (DDP), or data-parallel
with the item table sharded row-wise (TorchRec). The trainer calls the same few methods whatever
the mode; each strategy owns its mode's lifecycle (process group, wrapping, the sharded table's
gather / checkpoint / restore / unshard), so the trainer never branches on it.

Chosen by :func:`make_strategy` from ``train.item_table`` and the torchrun environment.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from genrec import checkpoint as ckpt
from genrec.errors import ConfigError
from genrec.training import distributed
from genrec.training.distributed import DistEnv

TABLE_OPTIMIZER = "table_optimizer.safetensors"
"""In ``last/`` of a run with a sharded item table: the table optimizer's per-row state."""


class LossModule(nn.Module):
    """The model and a task's loss as one module, so DDP's gradient hooks see the whole step."""

    def __init__(self, model: nn.Module, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch, epoch: int):
        return self.task.loss(self.model, batch, epoch)


class SingleProcess:
    """One process, the whole model in it."""

    def __init__(self, device: torch.device, env: DistEnv | None = None):
        self.device, self.env = device, env or DistEnv()

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    def prepare(self, model: nn.Module) -> None:
        """Change the model before wrapping (a sharded table swaps its item table in here)."""

    def wrap(self, model: nn.Module, task, train_cfg) -> nn.Module:
        """A module whose ``forward(batch, epoch)`` returns (loss, logs)."""
        return LossModule(model, task)

    def dense_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters AdamW updates."""
        return list(model.parameters())

    def global_loss(self, loss: torch.Tensor, value: float, num_targets: int) -> tuple[torch.Tensor, float]:
        """(loss to backpropagate, the global batch's mean loss value)."""
        return loss, value

    @contextlib.contextmanager
    def assembled(self):
        """The whole model readable on the main process (for validation and checkpoints)."""
        yield

    def checkpoint_weights(self, model: nn.Module) -> tuple[dict | None, dict[str, dict]]:
        """(weights when they are not ``model.state_dict()``, extra safetensors files for ``last/``)."""
        return None, {}

    def restore(self, folder: Path, model: nn.Module) -> None:
        """Load the weights of a ``last/`` checkpoint into the model (resume)."""
        ckpt.load_weights(folder, model)

    def broadcast(self, obj):
        return obj

    def finish(self, model: nn.Module) -> None:
        """After the last epoch: leave the main process with a plain, whole model."""

    def teardown(self, clean: bool = True) -> None:
        """End what the strategy started (the process group); ``clean``: the run ended without an
        error on this rank (only then do the ranks wait for each other first)."""


class DataParallel(SingleProcess):
    """torchrun + DDP: every rank trains on its share of each global batch. Each rank's loss is
    weighted by its share of the batch's targets, so DDP's gradient average is the gradient of
    the global batch's mean loss (see :mod:`genrec.training.distributed`)."""

    def __init__(self, device: torch.device, need_group: bool = False):
        env, device = distributed.setup(device, need_group=need_group)
        super().__init__(device, env)

    def wrap(self, model, task, train_cfg):
        module = LossModule(model, task)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=not task.all_parameters_used)

    def global_loss(self, loss, value, num_targets):
        n_all, loss_sum = distributed.all_sum([num_targets, value * num_targets], self.env, self.device)
        return loss * (num_targets * self.env.world_size / n_all), loss_sum / n_all

    def broadcast(self, obj):
        return distributed.broadcast(obj, self.env)

    def teardown(self, clean: bool = True) -> None:
        distributed.teardown(self.env, clean)


class RowwiseShardedTable(DataParallel):
    """The item table's rows split over the ranks (TorchRec, FBGEMM's fused optimizer), the rest
    data-parallel. Rank 0 gathers the table (and its optimizer state) for validation and
    checkpoints, which therefore have the usual format; see :mod:`genrec.training.sharded_table`."""

    def __init__(self, device: torch.device, train_cfg):
        super().__init__(device, need_group=True)
        self.train_cfg = train_cfg
        self.table = None
        self.wrapped = None
        self._gathered: dict[str, torch.Tensor] = {}

    def prepare(self, model):
        from genrec.training import sharded_table

        self.table = sharded_table.install(model)

    def wrap(self, model, task, train_cfg):
        from genrec.training import sharded_table

        lr = train_cfg.table_lr or train_cfg.lr
        self.wrapped = sharded_table.shard(LossModule(model, task), self.table, "model.item_embedding.ec", self.env.world_size,
                                           self.device, train_cfg.table_optimizer, lr, not task.all_parameters_used)
        return self.wrapped

    def dense_parameters(self, model):
        return [p for n, p in model.named_parameters() if not n.startswith("item_embedding.")]

    def global_loss(self, loss, value, num_targets):
        if not self.env.enabled:  # one process under torchrun: nothing to weight
            return loss, value
        return super().global_loss(loss, value, num_targets)

    @contextlib.contextmanager
    def assembled(self):
        if self.table is None:
            yield
            return
        self._gathered = self.table.gather(self.env.rank, self.wrapped.fused_optimizer)
        try:
            yield
        finally:
            self.table.release()
            self._gathered = {}

    def checkpoint_weights(self, model):
        from genrec.training import sharded_table

        if self.table is None:
            return None, {}
        weights, table_optimizer = sharded_table.checkpoint_state(model, self._gathered)
        return weights, {TABLE_OPTIMIZER: table_optimizer}

    def restore(self, folder, model):
        from genrec.training import sharded_table

        weights = ckpt.load_tensors(folder / "model.safetensors")  # every rank reads the whole table, keeps its rows
        sharded_table.restore(model, weights, ckpt.load_tensors(folder / TABLE_OPTIMIZER), self.wrapped.fused_optimizer)

    def finish(self, model):
        from genrec.training import sharded_table

        if self.table is not None:
            sharded_table.unshard(model, self.env.rank, self.wrapped.fused_optimizer)
            self.table = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available (use train.device=auto or cpu)")
    return torch.device(name)


def make_strategy(train_cfg) -> SingleProcess:
    """The strategy for a run: row-wise sharded table (``train.item_table=rowwise``; the config
    checked it is a retrieval run), DDP (under torchrun with more than one process) or one
    process. Joins the process group when needed."""
    device = resolve_device(train_cfg.device)
    if train_cfg.item_table == "rowwise":
        return RowwiseShardedTable(device, train_cfg)
    if distributed.world_size() > 1:
        return DataParallel(device)
    return SingleProcess(device)
