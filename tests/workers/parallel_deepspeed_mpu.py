"""Worker: DeepSpeed ZeRO-1 with ``mpu=state.mpu`` trains the TP toy model for 3 steps.

Writes ``OUT/rank{r}.pt`` with the per-step loss and DeepSpeed's global grad norm; the
test compares them with a single-process TP=1 ``torch.optim.AdamW`` run.
"""

from __future__ import annotations

import argparse
import os

import torch

from megacompress.parallel import state
from megacompress.training.trainer import import_deepspeed
from parallel_tp_dp import ToyModel, global_batch  # same directory (on sys.path as the script dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    deepspeed = import_deepspeed()  # without the JIT-built shared-memory comm kernel (~50 s on a new machine)
    deepspeed.init_distributed(dist_backend="gloo")
    state.initialize(args.tp)
    model = ToyModel()
    ds_config = {  # no clipping, AdamW defaults: the test's reference is plain torch.optim.AdamW
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
        "zero_optimization": {"stage": 1},
        "optimizer": {"type": "AdamW", "params": {"lr": args.lr, "torch_adam": True}},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config,
                                      mpu=state.mpu)
    ids, labels = global_batch()
    losses, norms = [], []
    for _ in range(args.steps):
        _, loss_tok = engine(ids, labels)
        loss = loss_tok.sum() / loss_tok.numel()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        norms.append(float(engine.get_global_grad_norm()))
    torch.save({"losses": losses, "norms": norms}, os.path.join(args.out, f"rank{state.get_rank()}.pt"))
    # Left to interpreter exit, gloo's threads can abort the process ("terminate called without an
    # active exception", exit -6) after a successful run, as megacompress.train notes.
    state.destroy()


if __name__ == "__main__":
    main()
