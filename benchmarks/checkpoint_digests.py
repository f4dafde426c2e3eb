"""What the checkpoint digests cost: a save with vs without hashing, and verified vs plain loads.

One process, DeepSpeed ZeRO-2 fp32 (the CPU default), a GPT of each preset: times
``CheckpointManager.save`` (DeepSpeed's write + RNG file + manifest with the sha256 of every
file), the hashing alone (`checkpoint.file_records` on the committed directory) and
``sha256`` throughput on the checkpoint's bytes; and a resume-style load of the optimizer
file through `safe_load.guarded_torch_load` (read + digest + restricted unpickle) against a
plain ``torch.load(weights_only=False)``. Writes ``benchmarks/results/checkpoint_digests.json``
and ``.png``. Usage: ``.venv/bin/python benchmarks/checkpoint_digests.py [--quick]``
(``--quick``: the tiny model only). Shared machine: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def measure(preset: str, work: Path) -> dict:
    from megacompress.models.config import ModelConfig
    from megacompress.models.gpt import GPT
    from megacompress.parallel import state
    from megacompress.training.checkpoint import CheckpointManager, TrainState, file_records, manifest_digests, \
        read_manifest
    from megacompress.training.safe_load import guarded_torch_load
    from megacompress.training.trainer import import_deepspeed

    deepspeed = import_deepspeed()
    model = GPT(ModelConfig.from_preset(preset, max_seq_len=64), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    config = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    config.update(train_batch_size=1, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, mpu=state.mpu, config=config)
    ids = torch.randint(0, model.config.vocab_size, (1, 65))
    engine.backward(engine(ids[:, :-1], labels=ids[:, 1:]).loss)
    engine.step()  # optimizer state exists: the checkpoint has its real size

    manager = CheckpointManager(work / preset, keep_last=1)
    start = time.perf_counter()
    tag_dir = manager.save(engine, TrainState(1, 1, 64), model_config=model.config.to_dict(), train_config={},
                           rng_state={})
    save_s = time.perf_counter() - start
    start = time.perf_counter()
    file_records(tag_dir)
    hash_s = time.perf_counter() - start
    size = sum(p.stat().st_size for p in tag_dir.iterdir() if p.is_file())

    optim = next(tag_dir.glob("*optim_states.pt"))
    start = time.perf_counter()
    torch.load(optim, map_location="cpu", weights_only=False)
    plain_load_s = time.perf_counter() - start
    digests = manifest_digests(tag_dir, read_manifest(tag_dir))
    start = time.perf_counter()
    with guarded_torch_load(digests):
        torch.load(optim)
    guarded_load_s = time.perf_counter() - start
    shutil.rmtree(work / preset)
    return {"preset": preset, "checkpoint_bytes": size, "save_s": save_s, "hash_s": hash_s,
            "hash_fraction_of_save": hash_s / save_s, "hash_gb_per_s": size / hash_s / 1e9,
            "optim_file_bytes": optim.stat().st_size if optim.exists() else None,
            "plain_load_s": plain_load_s, "guarded_load_s": guarded_load_s,
            "guarded_over_plain_load": guarded_load_s / plain_load_s}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["preset"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["save_s"] - r["hash_s"] for r in rows], 0.4, label="save: DeepSpeed write")
    ax.bar([i - 0.2 for i in x], [r["hash_s"] for r in rows], 0.4, bottom=[r["save_s"] - r["hash_s"] for r in rows],
           label="save: sha256 of every file")
    ax.bar([i + 0.2 for i in x], [r["guarded_load_s"] for r in rows], 0.4, label="verified restricted load (optim)")
    ax.set_xticks(list(x), [f"{n}\n{r['checkpoint_bytes'] / 1e6:.0f} MB" for n, r in zip(names, rows)])
    ax.set_ylabel("seconds")
    ax.set_title("checkpoint digests: cost per save / load")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model only")
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from megacompress.training.trainer import _default_single_process_env
    from megacompress.parallel import state

    _default_single_process_env()
    state.initialize(1)
    presets = ["tiny"] if args.quick else ["tiny", "baseline-12"]
    with tempfile.TemporaryDirectory(prefix="ckpt_digests_", dir=REPO / "benchmarks") as work:
        rows = [measure(preset, Path(work)) for preset in presets]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "checkpoint_digests.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, RESULTS / "checkpoint_digests.png")
    for r in rows:
        print(f"{r['preset']}: checkpoint {r['checkpoint_bytes'] / 1e6:.0f} MB, save {r['save_s']:.2f} s of which "
              f"hashing {r['hash_s']:.2f} s ({100 * r['hash_fraction_of_save']:.0f}%, {r['hash_gb_per_s']:.2f} GB/s); "
              f"optimizer file load verified {r['guarded_load_s']:.2f} s vs plain {r['plain_load_s']:.2f} s "
              f"({r['guarded_over_plain_load']:.2f}x)")
    state.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
