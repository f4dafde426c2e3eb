"""Worker: every rank builds the same GPTDataset over a shared cache dir.

Rank 0 must build the indices, the others must memory-map rank 0's files.
Writes ``rank{r}.pt`` with the cache outcome, the indices and a few samples.
"""

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist

from megacompress.data.gpt_dataset import GPTDataset, GPTDatasetConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    config = GPTDatasetConfig(seq_length=16, eod_id=0, num_samples=40, seed=7)
    dataset = GPTDataset(args.prefix, config, cache_dir=args.cache_dir)
    result = {
        "built": dataset.cache.built,
        "memmapped": all(isinstance(a, np.memmap) for a in dataset.cache.arrays.values()),
        "shuffle_idx": np.array(dataset.shuffle_idx),
        "samples": [dataset[i] for i in range(len(dataset))],
    }
    torch.save(result, os.path.join(args.out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
