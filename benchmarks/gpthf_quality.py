"""GPTHF vs baseline language-model quality: validation loss of a GPTHF-8-4-shaped and a Baseline-12-shaped model.

    .venv/bin/python benchmarks/gpthf_quality.py [--quick] [--steps N] [--out FILE.json] [--work-dir DIR]

Both models have the same width (hidden 256, 4 heads, SwiGLU FFN 688, sequence 256, GPT-2
vocabulary, tied embeddings) and the same total depth, scaled down from the paper's 12 layers
to 6: GPTHF 4 encoder + 2 body layers (the 2:1 split of GPTHF-8-4) vs a 6-layer GPT (Baseline-12
shape). Both start from the paper-recipe configs (configs/gpthf-8-4.yaml, configs/baseline12.yaml:
AdamW (0.9, 0.98), wd 0.01, clip 0.5, linear warmup + linear decay) with the sizes, the schedule
and the batch (16 sequences of 256 tokens, no ramp; peak lr 2e-3, 10% warmup) scaled to 2 CPU
processes: 100 steps (~0.37M labelled tokens, a fifth of an epoch) by default, about 12-15
minutes of training per model on 2 idle cores (~7 s per step; 13-14 s measured on a loaded
machine) plus ~3 minutes for the final validation over the whole validation set.

Data: ``CORPUS/train.jsonl`` and ``CORPUS/valid.jsonl`` (default ``../shared/data/corpus``),
preprocessed once into ``WORK_DIR/data`` with the GPT-2 tokenizer, ``--append-eod
--split-sentences`` (valid reuses the train shard's sentence model). Both models train on the
same shards with ``data.kind=document`` (one document chunk per sample, padded, same seed), so
they see the same documents and every training token at most once per epoch; GPTHF uses the
sentence sidecar (chunks end at sentence ends, ``eos_mask``), the baseline ignores it (chunks of
up to 256 tokens) and reads the ``<|endofsentence|>`` tokens as ordinary tokens. The loss of
both is per labelled token, sentence-end tokens included.

Stages (each skipped when done, so a rerun continues where it stopped): 1. preprocess;
2. per model, ``python -m torch.distributed.run --nproc-per-node 2 -m megacompress.train``
(DeepSpeed ZeRO-2, fp32 on CPU; a rerun resumes from the run's checkpoint), with a small
validation every ``steps / --eval-points`` steps for the curve; 3. per model, the final
validation: the same command again with ``eval.iters`` covering the *whole* validation set
(every token of ``valid.jsonl`` except each document's first is a target once, for both models,
so the two losses are over the same tokens, but for the < micro x nproc chunks that round the
last micro batch up and are counted twice; ``--final-eval-iters`` for less).
Runs live in ``WORK_DIR/<settings tag>/{gpthf,baseline}`` (metrics.jsonl, checkpoints/,
exit_status.json, bench_state.json).

Writes FILE.json (default benchmarks/results/gpthf_quality.json): per model its shape,
parameters, steps, tokens_seen, train_seconds, final ``valid_loss`` and the curves;
``gap_nats`` = GPTHF valid loss - baseline valid loss, beside ``paper_gap_nats`` (0.18, the
paper's gap at full size); the commands. And a PNG next to it: train and validation loss vs
training tokens for both models. ``--quick``: fewer steps, a validation subset.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import free_port  # noqa: E402
from benchmarks.stages import header, run  # noqa: E402
from megacompress.atomic import write_text_atomic  # noqa: E402

PAPER_GAP_NATS = 0.18
CONFIGS = {"gpthf": "configs/gpthf-8-4.yaml", "baseline": "configs/baseline12.yaml"}
LABELS = {"gpthf": "GPTHF", "baseline": "baseline GPT"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Stages are skipped when done: rerun the same command to continue.")
    p.add_argument("--quick", action="store_true",
                   help="a few minutes per model: 24 steps (unless --steps), 6 curve validations, the final one "
                        "on 16 micro batches per process")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per model (default 100; quick: 24)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpthf_quality.json")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "gpthf-quality",
                   help="shards (data/) and runs (default runs/gpthf-quality)")
    p.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "data" / "corpus",
                   help="directory with train.jsonl and valid.jsonl (default ../shared/data/corpus)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=688, help="SwiGLU hidden size (default 688)")
    p.add_argument("--layers", type=int, default=6,
                   help="total depth of both models; GPTHF gets 2/3 encoder + 1/3 body layers (default 6: 4 + 2)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16, help="global batch in sequences (default 16)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--nproc", type=int, default=2, help="data-parallel processes (default 2)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3; min lr = lr / 10)")
    p.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of the steps (default 0.1)")
    p.add_argument("--eval-points", type=int, default=None, help="validations for the curve (default 10; quick: 6)")
    p.add_argument("--eval-iters", type=int, default=8,
                   help="micro batches per process of each curve validation (default 8)")
    p.add_argument("--final-eval-iters", type=int, default=None,
                   help="micro batches per process of the final validation (default: the whole validation "
                        "set; quick: 16)")
    p.add_argument("--checkpoints", type=int, default=4, help="checkpoints per run, for resuming (default 4)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 24 if args.quick else 100
    if args.quick:
        args.final_eval_iters = args.final_eval_iters or 16
        args.eval_points = args.eval_points or 6
    args.eval_points = args.eval_points or 10
    if args.layers < 3 or args.layers % 3:
        p.error("--layers must be a multiple of 3 (GPTHF's 2:1 encoder:body split)")
    return args


# ---------------------------------------------------------------------------- helpers
def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------- stages
def preprocess(args, data: Path, commands: list[str]) -> dict[str, str]:
    """Shards of CORPUS/{train,valid}.jsonl in ``data``: {split: prefix}."""
    prefixes = {}
    for split in ("train", "valid"):
        prefix = data / split
        shard = f"{prefix}_text_document"
        prefixes[split] = shard
        extra = [] if split == "train" else ["--sentence-model", f"{data / 'train'}_text_document.sentences.json"]
        cmd = [sys.executable, "-m", "megacompress.data.preprocess", "--input", str(args.corpus / f"{split}.jsonl"),
               "--output-prefix", str(prefix), "--tokenizer", "gpt2", "--append-eod", "--split-sentences", *extra]
        commands.append(shlex.join(cmd))
        if Path(f"{shard}.meta.json").exists():
            print(f"{rel(Path(shard))}: already there, reusing it")
            continue
        data.mkdir(parents=True, exist_ok=True)
        run(cmd)
    return prefixes


def model_overrides(args, name: str) -> list[str]:
    sets = [f"model.hidden_size={args.hidden}", f"model.num_heads={args.heads}", f"model.ffn_hidden_size={args.ffn}",
            f"model.num_layers={args.layers}", f"model.max_seq_len={args.seq_len}", "data.kind=document"]
    if name == "gpthf":
        sets += [f"model.encoder_layers={2 * args.layers // 3}", f"model.body_layers={args.layers // 3}",
                 "data.use_sentences=true"]
    else:
        sets += ["data.use_sentences=false"]
    return sets


def train_command(args, name: str, run_dir: Path, prefixes: dict[str, str], eval_iters: int) -> list[str]:
    steps = args.steps
    eval_interval = max(1, steps // max(1, args.eval_points))
    sets = [*model_overrides(args, name),
            f"data.data_path=[{prefixes['train']}]", f"eval.data_path=[{prefixes['valid']}]",
            f"logging.run_dir={run_dir}", "logging.progress_bar=false",
            f"logging.log_interval={max(1, min(eval_interval, steps // 50))}",
            f"schedule.train_steps={steps}", f"schedule.warmup_steps={max(1, round(args.warmup * steps))}",
            "schedule.decay=linear", f"schedule.global_batch_size={args.batch}",
            f"schedule.micro_batch_size={args.micro_batch}", "schedule.ramp_start_batch_size=0",
            f"optimizer.lr={args.lr}", f"optimizer.min_lr={args.lr / 10}",
            f"eval.interval={eval_interval}", f"eval.iters={eval_iters}",
            f"checkpoint.interval={max(1, steps // max(1, args.checkpoints))}", "checkpoint.keep_last=1"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}",
            "--master-addr=127.0.0.1", "--master-port=PORT", "-m", "megacompress.train",
            "--config", CONFIGS[name], *[a for s in sets for a in ("--set", s)]]


def with_port(cmd: list[str]) -> list[str]:
    return [f"--master-port={free_port()}" if a == "--master-port=PORT" else a for a in cmd]


def valid_chunks(args, name: str, prefix: str, cache_dir: Path) -> int:
    """Samples in one epoch of the validation shard as this model's trainer cuts it."""
    from megacompress.data.document_dataset import DocumentDataset, DocumentDatasetConfig
    from megacompress.data.tokenizers import build_tokenizer

    tok = build_tokenizer("gpt2")
    cfg = DocumentDatasetConfig(seq_length=args.seq_len, pad_id=tok.special_id("pad"), num_samples=None,
                                seed=1234, shuffle=True, use_sentences=name == "gpthf",
                                eos_id=tok.special_id("eos"))
    return len(DocumentDataset(prefix, cfg, cache_dir))


def train_and_eval(args, name: str, run_dir: Path, prefixes: dict[str, str], cache_dir: Path) -> dict:
    """Stage 2 + 3 for one model (each skipped when done); returns the run's bench_state.json."""
    state_path = run_dir / "bench_state.json"
    state = read_json(state_path, {"train_wall_s": 0.0, "train_invocations": 0})
    cmd = train_command(args, name, run_dir, prefixes, args.eval_iters)
    state["train_command"] = shlex.join(cmd)
    status = read_json(run_dir / "exit_status.json", {})
    header(f"{LABELS[name]}: train {args.steps} steps ({rel(run_dir)})")
    if status.get("reason") == "finished" and status.get("step") == args.steps:
        print(f"already trained ({status['step']} steps), skipping")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        try:
            run(with_port(cmd))
        finally:
            state["train_wall_s"] += time.time() - start
            state["train_invocations"] += 1
            write_text_atomic(state_path, json.dumps(state, indent=2))
        status = read_json(run_dir / "exit_status.json", {})
        if status.get("reason") != "finished":
            raise SystemExit(f"error: {name} training ended with {status}; rerun to resume")

    chunks = valid_chunks(args, name, prefixes["valid"], cache_dir)
    per_call = args.micro_batch * args.nproc
    iters = args.final_eval_iters or math.ceil(chunks / per_call)
    header(f"{LABELS[name]}: final validation, {iters} micro batches x {per_call} "
           f"({iters * per_call} samples; the validation set has {chunks})")
    final = state.get("final_eval")
    if final and final.get("eval_iters") == iters and final.get("step") == args.steps:
        print(f"already done: validation loss {final['valid_loss']:.4f}, skipping")
        return state
    lines_before = len(read_metrics(run_dir))
    eval_cmd = train_command(args, name, run_dir, prefixes, iters)  # resumes at the last step: only validates
    state["final_eval_command"] = shlex.join(eval_cmd)
    seconds = run(with_port(eval_cmd))
    new = [r for r in read_metrics(run_dir)[lines_before:] if r.get("split") == "valid"]
    if not new or new[-1]["step"] != args.steps:
        raise SystemExit(f"error: {name}: the final validation wrote no validation line at step {args.steps}")
    state["final_eval"] = {"valid_loss": new[-1]["loss"], "ppl": new[-1]["ppl"], "step": new[-1]["step"],
                           "eval_iters": iters, "eval_samples": iters * per_call, "valid_chunks": chunks,
                           "whole_valid_set": iters * per_call >= chunks, "seconds": round(seconds, 1),
                           "metrics_line": lines_before}
    write_text_atomic(state_path, json.dumps(state, indent=2))
    print(f"validation loss {new[-1]['loss']:.4f} (ppl {new[-1]['ppl']:.2f})")
    return state


# ---------------------------------------------------------------------------- report
def curves(run_dir: Path, state: dict) -> tuple[list[dict], list[dict]]:
    """(train, valid) points, deduplicated by step (a resumed run replays steps: keep the last);
    valid points are the curve's (before the final validation), each with interpolated tokens."""
    import numpy as np

    records = read_metrics(run_dir)[:state["final_eval"]["metrics_line"]]
    train = {r["step"]: r for r in records if r.get("split") == "train"}
    valid = {r["step"]: r for r in records if r.get("split") == "valid"}
    train_points = [{"step": s, "tokens": r["tokens_seen"], "loss": r["loss"]} for s, r in sorted(train.items())]
    steps = [0] + [p["step"] for p in train_points]
    tokens = [0] + [p["tokens"] for p in train_points]
    valid_points = [{"step": s, "tokens": int(np.interp(s, steps, tokens)), "loss": r["loss"]}
                    for s, r in sorted(valid.items())]
    return train_points, valid_points


def model_record(args, name: str, run_dir: Path, state: dict) -> dict:
    from megacompress.models.config import ModelConfig
    from megacompress.models.flops import count_parameters

    overrides = dict(hidden_size=args.hidden, num_heads=args.heads, ffn_hidden_size=args.ffn,
                     num_layers=args.layers, max_seq_len=args.seq_len)
    if name == "gpthf":
        config = ModelConfig.from_preset("gpthf-8-4", **overrides, encoder_layers=2 * args.layers // 3,
                                         body_layers=args.layers // 3)
        shape = f"GPTHF-{config.encoder_layers}-{config.body_layers}"
    else:
        config = ModelConfig.from_preset("baseline-12", **overrides)
        shape = f"Baseline-{config.num_layers}"
    params = count_parameters(config)
    train_points, valid_points = curves(run_dir, state)
    last = [r for r in read_metrics(run_dir) if r.get("split") == "train"][-1]
    final = state["final_eval"]
    return {"shape": shape, "config": CONFIGS[name], "hidden_size": config.hidden_size,
            "num_heads": config.num_heads, "ffn_hidden_size": config.ffn_hidden_size,
            "num_layers": config.num_layers, "encoder_layers": config.encoder_layers,
            "body_layers": config.body_layers, "max_seq_len": config.max_seq_len,
            "data_kind": "document", "use_sentences": name == "gpthf",
            "parameters": params.total, "non_embedding_parameters": params.non_embedding,
            "steps": last["step"], "samples_seen": last["samples_seen"], "tokens_seen": last["tokens_seen"],
            "train_seconds": round(state["train_wall_s"], 1), "train_invocations": state["train_invocations"],
            "final_train_loss": last["loss"], "tokens_per_s": last.get("tokens_per_s"),
            "valid_loss": final["valid_loss"], "valid_ppl": final["ppl"], "final_eval": final,
            "run_dir": rel(run_dir), "train_curve": train_points, "valid_curve": valid_points}


def plot(models: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in (("gpthf", "tab:red"), ("baseline", "tab:blue")):
        m = models[name]
        ax.plot([p["tokens"] for p in m["train_curve"]], [p["loss"] for p in m["train_curve"]], color=color,
                alpha=0.45, linewidth=1, label=f"{m['shape']} train")
        ax.plot([p["tokens"] for p in m["valid_curve"]], [p["loss"] for p in m["valid_curve"]], color=color,
                marker="o", markersize=3, label=f"{m['shape']} valid")
        ax.plot([m["tokens_seen"]], [m["valid_loss"]], color=color, marker="*", markersize=12, linestyle="none",
                label=f"{m['shape']} final valid {m['valid_loss']:.3f}")
    ax.set_xlabel("training tokens (labelled)")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for split in ("train", "valid"):
        if not (args.corpus / f"{split}.jsonl").is_file():
            sys.exit(f"error: {args.corpus / f'{split}.jsonl'} not found: this benchmark needs the shared corpus "
                     f"(../shared/data/corpus/{{train,valid}}.jsonl next to the repository), or pass --corpus DIR")
    start = time.time()
    work = args.work_dir
    tag = (f"h{args.hidden}-l{args.layers}-a{args.heads}-f{args.ffn}-s{args.seq_len}-b{args.batch}"
           f"-lr{args.lr:g}-{args.steps}steps")
    commands: list[str] = []
    header(f"Preprocess {args.corpus}/{{train,valid}}.jsonl (GPT-2 BPE, EOD, sentence boundaries)")
    prefixes = preprocess(args, work / "data", commands)
    states = {}
    for name in ("gpthf", "baseline"):
        try:
            states[name] = train_and_eval(args, name, work / tag / name, prefixes, work / "index_cache")
        except subprocess.CalledProcessError as exc:
            sys.exit(f"error: exit status {exc.returncode} from the {name} run; rerun the same command to "
                     f"continue (finished stages are skipped, training resumes from its checkpoint)")
        commands += [states[name]["train_command"], states[name]["final_eval_command"]]

    models = {name: model_record(args, name, work / tag / name, states[name]) for name in states}
    gap = models["gpthf"]["valid_loss"] - models["baseline"]["valid_loss"]
    record = {
        "gpthf": models["gpthf"], "baseline": models["baseline"],
        "gap_nats": gap, "paper_gap_nats": PAPER_GAP_NATS, "quick": args.quick,
        "corpus": str(args.corpus), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                   for k, v in vars(args).items()},
        "commands": commands,
        "notes": ["gap_nats = GPTHF validation loss - baseline validation loss (nats per token); paper_gap_nats: "
                  "the paper's GPTHF-8-4 vs Baseline-12 gap at full size (768 wide, far more tokens)",
                  "both: data.kind=document on the same shards, same seed; GPTHF chunks end at sentence ends, the "
                  "baseline's are up to seq_len tokens, so tokens_seen differ slightly for the same samples",
                  "final validation: the whole valid shard unless final_eval.whole_valid_set is false (then the "
                  "first eval_samples of the shuffled chunks)",
                  "train_seconds: wall time of the training commands (startup and curve validations included)"],
        "seconds": round(time.time() - start, 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(record, indent=2) + "\n")
    png = out.with_suffix(".png")
    plot(models, png, f"{models['gpthf']['shape']} vs {models['baseline']['shape']} (hidden {args.hidden}, "
                      f"{args.steps} steps x {args.batch} seqs): gap {gap:+.3f} nats (paper {PAPER_GAP_NATS})")
    header("Summary")
    for name in ("gpthf", "baseline"):
        m = models[name]
        print(f"{m['shape']:12s} {m['parameters']:,} params, {m['tokens_seen']:,} tokens in "
              f"{m['train_seconds']:.0f} s: valid loss {m['valid_loss']:.4f} (ppl {m['valid_ppl']:.1f})")
    print(f"gap {gap:+.4f} nats (paper: {PAPER_GAP_NATS}); wrote {rel(out)} and {rel(png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
