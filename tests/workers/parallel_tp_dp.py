"""Worker: a toy TP x DP model (embedding -> MLPs -> tied logits -> vocab-parallel CE).

Run under torchrun: ``--tp`` sets the TP size, DP = world / tp. Each DP rank takes its
rows of one global batch; the loss is the mean over the local tokens, so the DP average
of the gradients equals the single-process gradient of the whole batch. Writes
``OUT/rank{r}.pt`` with the layout, the gathered (full) logits, per-token losses,
gradients and the TP-aware grad norm. The test builds the same model at TP=1
(``ToyModel``/``global_batch`` are imported from here) and compares.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn

from megacompress.parallel import grads, sharding, state
from megacompress.parallel.cross_entropy import vocab_parallel_cross_entropy
from megacompress.parallel.layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                          parallel_lm_logits)

VOCAB, HIDDEN, FFN, SEED = 37, 8, 16, 1234  # odd vocab: TP=2 pads it to 38
BATCH, SEQ = 4, 6


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = VocabParallelEmbedding(VOCAB, HIDDEN, init_seed=SEED, seed_offset="emb", init_std=0.5)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, HIDDEN))  # replicated over TP
        self.fc1 = ColumnParallelLinear(HIDDEN, FFN, bias=True, init_seed=SEED, seed_offset="fc1", init_std=0.3)
        self.fc2 = RowParallelLinear(FFN, HIDDEN, bias=True, init_seed=SEED, seed_offset="fc2", init_std=0.3)
        # gather_output / input_is_parallel=False exercise the gather and scatter mappings.
        self.fc3 = ColumnParallelLinear(HIDDEN, HIDDEN, gather_output=True, init_seed=SEED, seed_offset="fc3",
                                        init_std=0.3)
        self.fc4 = RowParallelLinear(HIDDEN, HIDDEN, input_is_parallel=False, init_seed=SEED, seed_offset="fc4",
                                     init_std=0.3)
        with torch.no_grad():  # non-zero biases so their gradients and norms are tested meaningfully
            self.fc1.bias.copy_(sharding.shard(torch.linspace(-0.2, 0.2, FFN), 0))
            self.fc2.bias.copy_(torch.linspace(0.1, -0.1, HIDDEN))

    def forward(self, ids, labels):
        h = self.emb(ids) * self.scale
        h = h + self.fc2(F.gelu(self.fc1(h)))
        h = h + self.fc4(torch.tanh(self.fc3(h)))
        logits = parallel_lm_logits(h, self.emb.weight)
        return logits, vocab_parallel_cross_entropy(logits, labels, vocab_size=VOCAB)


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    labels[:, -1] = -100
    labels[1, 2] = -100
    labels[2, 0] = VOCAB - 1  # the last real id sits next to the padding column at TP=2
    return ids, labels


def full_grad(param: torch.Tensor) -> torch.Tensor:
    if getattr(param, "tensor_model_parallel", False):
        return sharding.gather(param.grad, param.partition_dim)
    return param.grad.detach().clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--preinit", action="store_true",
                        help="initialise torch.distributed before state.initialize (reuse path)")
    parser.add_argument("--local_rank", type=int, help="passed by the deepspeed launcher (LOCAL_RANK is used)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.preinit:
        torch.distributed.init_process_group("gloo")
    state.initialize(args.tp)
    dist = torch.distributed
    rank = state.get_rank()
    mpu = state.mpu

    model = ToyModel()
    ids, labels = global_batch()
    dp, dp_rank = state.get_data_parallel_world_size(), state.get_data_parallel_rank()
    rows = slice(dp_rank * BATCH // dp, (dp_rank + 1) * BATCH // dp)
    logits, loss_tok = model(ids[rows], labels[rows])
    (loss_tok.sum() / loss_tok.numel()).backward()
    grads.all_reduce_data_parallel_gradients(model.parameters())

    result = {
        "rank": rank,
        "tp_rank": state.get_tensor_parallel_rank(),
        "dp_rank": dp_rank,
        "tp_group": dist.get_process_group_ranks(state.get_tensor_parallel_group()),
        "dp_group": dist.get_process_group_ranks(state.get_data_parallel_group()),
        "mpu": (mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size(),
                mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size(),
                mpu.get_tensor_model_parallel_src_rank(), mpu.get_data_parallel_group_ranks()),
        "rows": (rows.start, rows.stop),
        "logits": sharding.gather(logits, -1)[..., :VOCAB],
        "loss_tok": loss_tok.detach(),
        "params": {n: sharding.gather_parameter(p) for n, p in model.named_parameters()},
        "grads": {n: full_grad(p) for n, p in model.named_parameters()},
        "grad_norm": grads.grad_norm(model.parameters()),
        "grad_norm_inf": grads.grad_norm(model.parameters(), float("inf")),
    }
    clipped = grads.clip_grad_norm_(model.parameters(), max_norm=0.1)
    result["clipped_norm_before"] = clipped
    result["norm_after_clip"] = grads.grad_norm(model.parameters())
    torch.save(result, os.path.join(args.out, f"rank{rank}.pt"))
    state.destroy()
    if args.preinit:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
