"""Multi-process data-parallel training (``torchrun``; gloo on CPU, NCCL on GPU).

``torchrun --nproc_per_node N -m genrec.cli train CONFIG`` starts N copies of the same run. Each
builds the same global batches from (seed, epoch) and trains on its share of the rows (every N-th
user of a batch); :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients. Each
rank's loss is weighted by its share of the batch's targets, so the averaged gradient is the
gradient of the global batch's mean loss: the loss curve matches one process with the same global
batch (exactly for the retrieval losses whose candidates do not depend on the batch's rows, and
for ranking; ``in_batch`` and ``mixed`` take their in-batch negatives from the rank's own share of
the targets; the unified loss weights by item count).
Rank 0 alone evaluates, writes checkpoints and logs; the others follow its early-stopping state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from genrec.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    """Whether :func:`setup` created the process group (and :func:`teardown` should end it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_size() -> int:
    """Processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device, need_group: bool = False) -> tuple[DistEnv, torch.device]:
    """Join the process group torchrun describes in the environment (no-op for one process
    unless ``need_group``: sharded tables need a group even on one rank); returns the rank
    layout and this rank's device (``cuda:LOCAL_RANK`` on GPUs)."""
    world = world_size()
    if world <= 1 and not need_group:
        return DistEnv(), device
    if "RANK" not in os.environ:
        raise ConfigError(
            "train.item_table=rowwise runs under torchrun, even on one process: "
            "torchrun --nproc_per_node N -m genrec.cli train CONFIG ..."
        )
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), owns_group=not dist.is_initialized())
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if env.owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return env, device


def teardown(env: DistEnv, clean: bool = True) -> None:
    """End the process group if :func:`setup` started it (a caller's own group is left alone).

    After a clean run (``clean``) every rank first waits at a barrier: the ranks finish together
    (rank 0 tests and writes while the others would exit), and gloo's worker threads have
    finished, and let go of, every earlier collective's tensors. A worker thread that releases a
    Python-owned tensor while the interpreter shuts down aborts the process ("terminate called
    without an active exception") after a complete run; the barrier closes that window. After an
    error there is no barrier: the other ranks may be inside a collective this rank never joins,
    and a barrier would hang them all until the group's timeout instead of failing now."""
    if env.owns_group and dist.is_initialized():
        if clean and dist.get_backend() == "nccl":
            dist.barrier(device_ids=[env.local_rank])
        elif clean:
            dist.barrier()
        dist.destroy_process_group()


def all_sum(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Element-wise sum over ranks (one all-reduce)."""
    if not env.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(obj, env: DistEnv):
    """Rank 0's ``obj`` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
