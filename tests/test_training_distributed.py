"""The DeepSpeed training engine on real processes (torchrun, gloo, CPU).

One flow, few launches (each costs ~10 s of start-up on 2 cores):

1. reference: 1 process, ZeRO-0, micro 2 x 2 accumulation steps, 5 steps;
2. 2 processes: ZeRO-1, ZeRO-2, ZeRO-3 (micro 2 x DP 2), then ZeRO-2 stopped at step 3;
3. 2 processes, TP=2 (DP=1, 2 accumulation steps); its checkpoint exported with
   ``convert_checkpoint.py export`` loads at TP=1 with the TP=2 run's gathered weights
   (bitwise) and logits; the same in bf16 (ZeRO-1 keeps fp32 master weights): its losses
   near the reference and its export the fp32 masters, not the bf16 module;
4. a resume of the step-3 checkpoint is SIGKILLed while committing step 4: `latest` still
   names step 3 and the checkpoint verifies;
5. the same directory resumed to step 5 gives bitwise the uninterrupted ZeRO-2 losses;
6. the step-3 checkpoint converted to a universal checkpoint continues on 1 process with
   the losses of the 2-process run;
7. SIGUSR2 makes a single-process run checkpoint and exit with EXIT_REQUEUE (75).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from distributed_helpers import REPO_ROOT, cpu_env, free_port, run_checked, run_torchrun, signal_when_ready

from megacompress.models.gpt import GPT
from megacompress.models.outputs import gather_logits
from megacompress.models.pretrained import full_state_dict
from megacompress.training.checkpoint import SLEEP_BEFORE_COMMIT_ENV, read_latest, read_manifest
from megacompress.training.signals import EXIT_REQUEUE

WORKER = REPO_ROOT / "tests" / "workers" / "train_runs.py"
CONVERT = REPO_ROOT / "tools" / "convert_checkpoint.py"
STEPS = 5
REL_TOL = 1e-5


def common(shards: dict[str, str]) -> str:
    return ";".join([
        "model.vocab_size=259", "model.max_seq_len=32", "model.hidden_size=32", "model.num_heads=2",
        "model.num_layers=2", "model.ffn_hidden_size=64", "tokenizer.kind=bytes",
        f"data.data_path=[{shards['train']}]", f"eval.data_path=[{shards['valid']}]", "eval.iters=1",
        f"schedule.train_steps={STEPS}", "schedule.warmup_steps=1", "schedule.global_batch_size=4",
        "schedule.micro_batch_size=2", "logging.progress_bar=false", "optimizer.lr=3e-3",
    ])


def load(out: Path, name: str, rank: int = 0) -> dict:
    return torch.load(out / f"{name}.rank{rank}.pt")


def assert_close(actual: list[float], expected: list[float], what: str) -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} steps vs {len(expected)}"
    for step, (a, e) in enumerate(zip(actual, expected), 1):
        assert abs(a - e) <= REL_TOL * abs(e), f"{what}: step {step} loss {a!r} != reference {e!r}"


def worker_args(out: Path, runs: dict[str, str], shards, stop_at_step: int = 0) -> list[str]:
    args = ["--out", str(out), "--common", common(shards), "--stop-at-step", str(stop_at_step)]
    for name, spec in runs.items():
        args += ["--job", f"{name}={spec}"]
    return args


@pytest.fixture(scope="module")
def flow(sample_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_flow")
    ref = f"parallel.zero_stage=0;logging.run_dir={out}/ref"
    run_checked([sys.executable, str(WORKER), *worker_args(out, {"ref": ref}, sample_shards)],
                env=cpu_env(), timeout=240)
    runs = {f"zero{z}": f"parallel.zero_stage={z};logging.run_dir={out}/zero{z}" for z in (1, 2, 3)}
    run_torchrun(WORKER, 2, worker_args(out, runs, sample_shards), timeout=300)
    run_torchrun(WORKER, 2, worker_args(out, {"stop3": f"logging.run_dir={out}/stop3"}, sample_shards,
                                        stop_at_step=3), timeout=240)
    return out


@pytest.mark.distributed
def test_zero_stages_match_single_process(flow):
    reference = load(flow, "ref")["losses"]
    assert len(reference) == STEPS and reference[-1] < reference[0]
    for stage in (1, 2, 3):
        for rank in (0, 1):
            assert_close(load(flow, f"zero{stage}", rank)["losses"], reference, f"ZeRO-{stage} rank {rank}")


def export(flow: Path, name: str) -> GPT:
    """``convert_checkpoint.py export`` of run ``name``'s checkpoints, loaded at TP=1 in this process."""
    out = flow / f"{name}_export"
    run_checked([sys.executable, str(CONVERT), "export", str(flow / name / "checkpoints"), str(out)],
                env=cpu_env(), timeout=240)
    return GPT.from_pretrained(out)


@pytest.fixture(scope="module")
def tp2(flow, sample_shards):
    """The TP=2 runs (ZeRO-1, fp32 and bf16): losses, gathered weights and probe logits in
    ``flow/tp2.rank*.pt`` and ``flow/tp2_bf16.rank*.pt``."""
    spec = "parallel.tensor_parallel_size=2;parallel.zero_stage=1"
    runs = {"tp2": f"{spec};logging.run_dir={flow}/tp2",
            "tp2_bf16": f"{spec};parallel.precision=bf16;logging.run_dir={flow}/tp2_bf16"}
    run_torchrun(WORKER, 2, worker_args(flow, runs, sample_shards) + ["--save-model"], timeout=240)
    return flow


@pytest.mark.distributed
def test_tensor_parallel_matches_single_process(flow, tp2):
    reference = load(flow, "ref")["losses"]
    for rank in (0, 1):
        assert_close(load(tp2, "tp2", rank)["losses"], reference, f"TP=2 rank {rank}")


@pytest.mark.distributed
def test_export_of_tensor_parallel_checkpoint(tp2):
    trained = load(tp2, "tp2")
    model = export(tp2, "tp2")
    exported = full_state_dict(model)
    assert exported.keys() == trained["weights"].keys()
    for name, weight in trained["weights"].items():
        assert torch.equal(exported[name], weight), f"{name}: exported weights differ from the TP=2 run's"
    with torch.no_grad():
        logits = gather_logits(model(trained["probe_ids"]).logits, model.config.vocab_size)
    torch.testing.assert_close(logits, trained["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.distributed
def test_bf16_trains_near_fp32_and_exports_its_fp32_master_weights(flow, tp2):
    reference, losses = load(flow, "ref")["losses"], load(tp2, "tp2_bf16")["losses"]
    assert len(losses) == STEPS and all(abs(a - e) <= 2e-3 * e for a, e in zip(losses, reference)), \
        (losses, reference)
    module = load(tp2, "tp2_bf16")["weights"]  # the bf16 module the run computed with
    exported = full_state_dict(export(tp2, "tp2_bf16"))
    assert exported.keys() == module.keys()
    finer = 0
    for name, weight in module.items():
        assert weight.dtype == torch.bfloat16 and exported[name].dtype == torch.float32, name
        # bf16 is the fp32 master rounded to 8 mantissa bits: within half a bf16 step of it
        torch.testing.assert_close(exported[name], weight.float(), rtol=2.0 ** -8, atol=1e-30)
        finer += not torch.equal(exported[name], exported[name].bfloat16().float())
    assert finer, "the export holds bf16 values: the fp32 master weights were not read"
    for run, precision in ((flow / "ref", "fp32"), (tp2 / "tp2_bf16", "bf16")):  # what a resume is checked against
        root = run / "checkpoints"
        assert read_manifest(root / read_latest(root))["precision"] == precision


@pytest.mark.distributed
def test_kill_during_commit_then_exact_resume(flow, sample_shards):
    run_dir = flow / "resume"
    shutil.copytree(flow / "stop3", run_dir)
    ckpt = run_dir / "checkpoints"
    assert read_latest(ckpt) == "global_step3"

    # Resume and get killed while rank 0 sleeps between the ranks' writes and the commit.
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={port}", str(WORKER),
           *worker_args(flow, {"killed": f"logging.run_dir={run_dir}"}, sample_shards, stop_at_step=4)]
    proc = subprocess.Popen(cmd, env=cpu_env({SLEEP_BEFORE_COMMIT_ENV: "120"}), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (ckpt / "global_step4.tmp" / "manifest.json").exists():
            assert proc.poll() is None and time.time() < deadline, "resumed run never reached the commit"
            time.sleep(0.5)
    finally:
        # torchrun starts its workers in sessions of their own: kill them, not only its group
        # (a surviving rank 0 would commit step 4 later, and holds the run directory's lock).
        workers = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        psutil.wait_procs(workers, timeout=30)
        proc.wait()
    assert read_latest(ckpt) == "global_step3"
    assert not (ckpt / "global_step4").exists()
    read_manifest(ckpt / "global_step3")

    # Resume the killed directory to the end: bitwise the uninterrupted run.
    run_torchrun(WORKER, 2, worker_args(flow, {"resumed": f"logging.run_dir={run_dir}"}, sample_shards),
                 timeout=240)
    uninterrupted = load(flow, "zero2")["losses"]
    resumed = load(flow, "resumed")
    assert resumed["steps"] == [4, 5]
    assert resumed["losses"] == uninterrupted[3:], "resumed losses differ from the uninterrupted run"
    assert not (ckpt / "global_step4.tmp").exists()


@pytest.mark.distributed
def test_universal_checkpoint_reshards_two_to_one(flow, sample_shards):
    universal = flow / "universal"
    run_checked([sys.executable, str(REPO_ROOT / "tools" / "convert_checkpoint.py"), "to-universal",
                 str(flow / "stop3" / "checkpoints"), str(universal)], env=cpu_env(), timeout=240)
    spec = (f"logging.run_dir={flow}/one;checkpoint.load_dir={universal};checkpoint.load_universal=true")
    run_checked([sys.executable, str(WORKER), *worker_args(flow, {"one": spec}, sample_shards)],
                env=cpu_env(), timeout=240)
    one = load(flow, "one")
    assert one["steps"] == [4, 5]
    assert_close(one["losses"], load(flow, "zero2")["losses"][3:], "universal 2->1")


@pytest.mark.distributed
def test_sigusr2_checkpoints_and_exits_requeue(sample_shards, tmp_path):
    run_dir = tmp_path / "signalled"
    overrides = [f"--set={kv}" for kv in common(sample_shards).split(";")] + [
        "--set=schedule.train_steps=1000", "--set=schedule.warmup_steps=1", f"--set=logging.run_dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "megacompress.train", *overrides], env=cpu_env(), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    stderr = signal_when_ready(proc, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2,
                               signal.SIGUSR2)
    assert proc.returncode == EXIT_REQUEUE, stderr[-3000:]
    status = json.loads((run_dir / "exit_status.json").read_text())
    assert status["reason"] == "signal" and status["signal"] == "SIGUSR2"
    assert read_latest(run_dir / "checkpoints") == f"global_step{status['step']}"
    read_manifest(run_dir / "checkpoints" / f"global_step{status['step']}")
