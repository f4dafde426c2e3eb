"""Worker: run one or more trainings in this process and save each rank's loss history.

    torchrun --nproc-per-node 2 tests/workers/train_runs.py --out DIR \
        --common "k=v;k=v" --job NAME="k=v;k=v" [--job ...] [--stop-at-step K] [--save-model]

Each run writes ``DIR/NAME.rank{r}.pt``: {"steps", "losses", "grad_norms", "reason", "checkpoint"};
with ``--save-model`` also "weights" (the trained model's TP-gathered, unpadded parameters,
`pretrained.full_state_dict`), "probe_ids" (a fixed [2, 16] batch) and "logits" (its
gathered [2, 16, V] logits).
Not for ZeRO-3 runs (their module parameters are partitioned away).

``--first-step-grads``: instead of training, accumulate the first global batch and save
{"grads": name -> gradient (all-reduced over DP), "loss": the step's loss} (ZeRO-0, TP=1).
"""

import argparse
import gc
import os
from pathlib import Path

import torch

from megacompress.models.outputs import gather_logits
from megacompress.models.pretrained import full_state_dict
from megacompress.training.config import load_config
from megacompress.training.trainer import Trainer


def probe_ids(vocab_size: int) -> torch.Tensor:
    """A fixed [2, 16] batch of token ids for comparing trained models."""
    return (torch.arange(32).reshape(2, 16) * 7919) % vocab_size


def split(spec: str) -> list[str]:
    return [s for s in spec.split(";") if s]


def first_step_grads(trainer: Trainer) -> dict:
    loader = iter(trainer._loader(trainer.train_data, trainer.total_train_samples, 0, trainer.ramp))
    totals = trainer.accumulate_gradients(trainer.next_micro_batches(loader))
    grads = {n: p.grad.detach().clone() for n, p in trainer.engine.module.named_parameters()}
    return {"grads": grads, "loss": totals["loss_sum"] / totals["labelled"], "labelled": totals["labelled"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--common", default="")
    parser.add_argument("--job", action="append", required=True, help="NAME=k=v;k=v")
    parser.add_argument("--stop-at-step", type=int, default=0)
    parser.add_argument("--save-model", action="store_true", help="also save gathered weights and probe logits")
    parser.add_argument("--first-step-grads", action="store_true", help="save the first step's gradients only")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    for run in args.job:
        name, _, spec = run.partition("=")
        config = load_config(None, split(args.common) + split(spec))
        trainer = Trainer(config, stop_at_step=args.stop_at_step)
        if args.first_step_grads:
            torch.save(first_step_grads(trainer), out / f"{name}.rank{rank}.pt")
            del trainer
            gc.collect()
            continue
        result = trainer.train()
        record = {"steps": [r["step"] for r in result.history],
                  "losses": [r["loss"] for r in result.history],
                  "grad_norms": [r["grad_norm"] for r in result.history],
                  "reason": result.reason, "checkpoint": result.checkpoint}
        if args.save_model:  # collective over the TP group
            model, vocab_size = trainer.engine.module, trainer.model_config.vocab_size
            record["probe_ids"] = probe_ids(vocab_size)
            with torch.no_grad():
                record["logits"] = gather_logits(model(record["probe_ids"]).logits, vocab_size)
            record["weights"] = full_state_dict(model)
        torch.save(record, out / f"{name}.rank{rank}.pt")
        del trainer
        gc.collect()


if __name__ == "__main__":
    main()
