"""Run under torchrun (2 processes): a row-wise sharded item table against hand-computed values.

Each rank looks up different ids (different counts); the loss is rank-weighted, so the expected
SGD update of row r is -lr * (sum over ranks of d loss_rank / d row r) / world_size: TorchRec
averages the table gradient over ranks, like DDP. Exits non-zero with a message on any mismatch."""

import sys

import torch
import torch.distributed as dist
from torch import nn

from genrec.training import sharded_table
from genrec.training.sharded_table import TABLE


class Root(nn.Module):
    def __init__(self, table):
        super().__init__()
        self.item_embedding = table

    def forward(self, ids, weight):
        return (self.item_embedding(ids).sum(-1) * weight).sum()


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"rank {dist.get_rank()}: FAILED {what}", file=sys.stderr)
        sys.exit(1)


def main(optimizer: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    plain = nn.Embedding(11, 4, padding_idx=0)
    init = plain.weight.detach().clone()
    table = sharded_table.ShardedItemTable(plain)
    root = Root(table)
    lr = 0.5
    wrapped = sharded_table.shard(root, table, "item_embedding.ec", world, torch.device("cpu"), optimizer, lr, False)
    table.train()
    everything = table(torch.arange(11))
    check(torch.allclose(everything[1:], init[1:]) and bool((everything[0] == 0).all()), "lookup of every row = initial rows, padding row zero")

    ids = [torch.tensor([[1, 2, 2], [0, 0, 5]]), torch.tensor([[2, 9, 9, 10, 0]])][rank]
    weight = float(rank + 1)
    wrapped(ids, weight).backward()  # the fused optimizer updates the rows here

    # hand gradient: each occurrence of id r (r != 0) on rank k adds weight_k to every column of row r
    grad = torch.zeros(11, 4)
    for k, rows in enumerate([[1, 2, 2, 5], [2, 9, 9, 10]]):
        for r in rows:
            grad[r] += float(k + 1)
    grad /= world
    state = table.gather(rank, wrapped.fused_optimizer)
    if rank == 0:
        if optimizer == "sgd":
            expected = init - lr * grad
        else:  # row-wise Adagrad: one accumulator per row = mean of the squared gradient over columns
            acc = (grad**2).mean(1, keepdim=True)
            expected = init - lr * grad / (acc.sqrt() + 1e-8)
            check(torch.allclose(state[f"{TABLE}.momentum1"], acc.squeeze(1), atol=1e-6), f"adagrad accumulator {state[f'{TABLE}.momentum1']} vs {acc.squeeze(1)}")
        check(torch.allclose(state[f"{TABLE}.weight"][1:], expected[1:], atol=1e-5), f"{optimizer} update:\n{state[f'{TABLE}.weight']}\nvs\n{expected}")
        check(torch.equal(table(torch.tensor([3, 0])), torch.cat([state[f"{TABLE}.weight"][3:4], torch.zeros(1, 4)])), "assembled copy serves lookups locally")
    table.release()

    # round trip: load other rows (and optimizer state) on every rank, gather them back on rank 0
    new = {f"{TABLE}.weight": torch.arange(44, dtype=torch.float32).view(11, 4)}
    if optimizer == "rowwise_adagrad":
        new[f"{TABLE}.momentum1"] = torch.arange(11, dtype=torch.float32) / 10
    table.load(new, wrapped.fused_optimizer)
    back = table.gather(rank, wrapped.fused_optimizer)
    if rank == 0:
        for key, value in new.items():
            check(torch.equal(back[key], value), f"load/gather round trip of {key}")
    table.release()
    dist.barrier()
    print(f"rank {rank}: ok")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
