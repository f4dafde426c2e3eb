"""Communication per optimizer step, measured vs `megacompress.launch.comm_volume`, and 1 -> 2 process throughput.

For the tiny GPT (configs/tiny_gpt.yaml, fp32 on CPU, gloo) on 2 processes:

* ``comm``: ZeRO-1, ZeRO-2, ZeRO-3 (DP=2) and TP=2 (DP=1, ZeRO-1), each run through
  ``benchmarks/comm_count.py`` under torchrun, which counts the bytes every rank sends
  through torch.distributed collectives per optimizer step (ring-algorithm volumes; see
  its docstring). ``measured_bytes`` is the mean over ranks and over the steps after the
  first; ``wire_bytes`` the same for the TCP bytes the rank's sockets really sent (gloo,
  headers included); ``predicted_bytes`` is `megacompress.launch.comm_volume` (DP/ZeRO + TP terms)
  for the same layout at 4 bytes per value.
* ``throughput``: ZeRO-2 at 1 and 2 processes (same global batch), median tokens/s of the
  steps after the first, from the runs' metrics.jsonl.

    .venv/bin/python benchmarks/scaling.py [--quick] [--out benchmarks/results/scaling.json]

Writes the JSON (key ``comm``: a list of {config, predicted_bytes, measured_bytes, ...})
and a PNG beside it. The machine is shared: throughput varies with load; bytes do not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megacompress.launch.comm_volume import Layout, dp_bytes, tp_bytes  # noqa: E402
from megacompress.atomic import write_text_atomic  # noqa: E402
from megacompress.models.flops import count_parameters  # noqa: E402
from megacompress.training.config import load_config  # noqa: E402

CONFIG = REPO / "configs" / "tiny_gpt.yaml"
VALUE_BYTES = 4  # fp32 on CPU
GLOBAL_BATCH, MICRO_BATCH = 8, 2
COMM_CASES = {"zero1": {"parallel.zero_stage": 1}, "zero2": {"parallel.zero_stage": 2},
              "zero3": {"parallel.zero_stage": 3},
              "tp2": {"parallel.tensor_parallel_size": 2, "parallel.zero_stage": 1}}


def pack_data(out: Path, documents: int) -> Path:
    """GPT-2 shards of the first ``documents`` sample documents (train) and 5 (valid) in ``out``."""
    for split, count in (("train", documents), ("valid", 5)):
        lines = (REPO / "data" / "sample" / f"{split}.jsonl").read_text().splitlines()[:count]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        subprocess.run([sys.executable, "-m", "megacompress.data.preprocess", "--input", str(out / f"{split}.jsonl"),
                        "--output-prefix", str(out / split), "--append-eod"], check=True, capture_output=True)
    return out


def overrides(data: Path, run_dir: Path, seq_len: int, steps: int, extra: dict) -> list[str]:
    settings = {"data.data_path": f"[{data / 'train_text_document'}]",
                "eval.data_path": f"[{data / 'valid_text_document'}]", "eval.interval": 0,
                "model.max_seq_len": seq_len, "schedule.train_steps": steps, "schedule.warmup_steps": 1,
                "schedule.global_batch_size": GLOBAL_BATCH, "schedule.micro_batch_size": MICRO_BATCH,
                "checkpoint.interval": 0, "logging.run_dir": run_dir, "logging.log_interval": 1,
                "logging.progress_bar": "false", **extra}
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def torchrun(nproc: int, script: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def predicted(settings: list[str], seq_len: int) -> float:
    config = load_config(str(CONFIG), [s for s in settings if s != "--set"])
    model = config.model.build()
    tp, zero = config.parallel.tensor_parallel_size, config.parallel.zero_stage
    layout = Layout(gpus=2, tp=tp, zero=zero, global_batch=GLOBAL_BATCH, micro_batch=MICRO_BATCH, seq_len=seq_len)
    return dp_bytes(count_parameters(model).total, layout, VALUE_BYTES) + tp_bytes(model, layout, VALUE_BYTES)


def measure_comm(name: str, data: Path, work: Path, seq_len: int, steps: int) -> dict:
    run_dir = work / name
    settings = overrides(data, run_dir, seq_len, steps, COMM_CASES[name])
    torchrun(2, [str(REPO / "benchmarks" / "comm_count.py"), "--out", str(run_dir / "comm"), "--",
                 "--config", str(CONFIG), *settings])
    ranks = [json.loads((run_dir / "comm" / f"rank{r}.json").read_text()) for r in (0, 1)]
    measured, wire = (statistics.mean(b - a for rank in ranks for a, b in zip(rank[key][:-1], rank[key][1:]))
                      for key in ("steps", "wire_steps"))  # per step after the first, both ranks
    pred = predicted(settings, seq_len)
    return {"config": name, "predicted_bytes": pred, "measured_bytes": measured,
            "measured_over_predicted": measured / pred if pred else None, "wire_bytes": wire,
            "rank0_last_step_calls": ranks[0]["last_step_calls"], "steps_measured": steps - 1}


def measure_throughput(nproc: int, data: Path, work: Path, seq_len: int, steps: int) -> dict:
    run_dir = work / f"throughput{nproc}"
    torchrun(nproc, ["-m", "megacompress.train", "--config", str(CONFIG),
                     *overrides(data, run_dir, seq_len, steps, {"parallel.zero_stage": 2})])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split", "train") == "train" and "step_time_s" in r][1:]
    step_s = statistics.median(r["step_time_s"] for r in train)
    return {"processes": nproc, "median_step_s": step_s, "tokens_per_s": GLOBAL_BATCH * seq_len / step_s}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [c["config"] for c in result["comm"]]
    xs = range(len(names))
    for offset, key in ((-0.27, "predicted_bytes"), (0, "measured_bytes"), (0.27, "wire_bytes")):
        left.bar([x + offset for x in xs], [c[key] / 1e6 for c in result["comm"]], 0.27, label=key.split("_")[0])
    left.set_xticks(list(xs), names)
    left.set_ylabel("MB sent per rank per optimizer step")
    left.legend()
    tput = result["throughput"]
    right.bar([str(t["processes"]) for t in tput], [t["tokens_per_s"] for t in tput])
    right.set_xlabel("processes (ZeRO-2)")
    right.set_ylabel("tokens/s")
    fig.suptitle("tiny GPT, 2 CPU processes, gloo")
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/scaling.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seq 64, 4 steps, 40 documents (a smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scaling.json")
    args = parser.parse_args(argv)
    seq_len, steps, documents = (64, 4, 40) if args.quick else (128, 10, 200)
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = Path(tmp)
        data = pack_data(work, documents)
        comm = [measure_comm(name, data, work, seq_len, steps) for name in COMM_CASES]
        throughput = [measure_throughput(n, data, work, seq_len, steps) for n in (1, 2)]
    throughput[1]["speedup"] = throughput[1]["tokens_per_s"] / throughput[0]["tokens_per_s"]
    result = {"setup": {"model": "tiny", "seq_len": seq_len, "global_batch": GLOBAL_BATCH,
                        "micro_batch": MICRO_BATCH, "steps": steps, "value_bytes": VALUE_BYTES},
              "comm": comm, "throughput": throughput}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"{'config':<8}{'predicted MB':>14}{'measured MB':>13}{'ratio':>8}{'wire MB':>10}")
    for c in comm:
        print(f"{c['config']:<8}{c['predicted_bytes'] / 1e6:>14.2f}{c['measured_bytes'] / 1e6:>13.2f}"
              f"{c['measured_over_predicted']:>8.3f}{c['wire_bytes'] / 1e6:>10.2f}")
    for t in throughput:
        print(f"{t['processes']} process(es): {t['tokens_per_s']:.0f} tokens/s (median step {t['median_step_s']:.2f} s)")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
