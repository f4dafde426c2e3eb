"""Received checkpoints and shared run directories: nothing runs code, nothing is silently
restarted, overwritten or mixed up (docs/training.md, "Trusting checkpoints").

One tiny single-process run (ZeRO-1, bf16: its optimizer file holds every DeepSpeed class of
the allow-list but the fp16 loss scaler) is trained once; each test works on a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_helpers import REPO_ROOT, cpu_env, signal_when_ready

from megacompress.integrity import IntegrityError, resolve_inside
from megacompress.models import load_pretrained, pretrained
from megacompress.training.checkpoint import CheckpointError, read_latest
from megacompress.training.run_lock import RunDirBusy, RunLock
from megacompress.training.safe_load import ALLOWED_GLOBALS, UnsafeCheckpointError, restricted_load
from megacompress.training.signals import EXIT_REQUEUE

TINY = ["model.vocab_size=259", "model.max_seq_len=32", "model.hidden_size=32", "model.num_heads=2",
        "model.num_layers=2", "model.ffn_hidden_size=64", "tokenizer.kind=bytes", "eval.iters=1",
        "schedule.warmup_steps=1", "schedule.global_batch_size=2", "schedule.micro_batch_size=2",
        "parallel.zero_stage=1", "parallel.precision=bf16", "logging.progress_bar=false",
        "checkpoint.allow_changes=[schedule.train_steps]"]
CONVERT = str(REPO_ROOT / "tools" / "convert_checkpoint.py")
OPTIM = "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
MODEL = "mp_rank_00_model_states.pt"


def train_command(shards, run_dir, *extra) -> list[str]:
    overrides = TINY + [f"data.data_path=[{shards['train']}]", f"eval.data_path=[{shards['valid']}]",
                        f"logging.run_dir={run_dir}", *extra]
    return [sys.executable, "-m", "megacompress.train", *[f"--set={o}" for o in overrides]]


def run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=cpu_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 with one ``error:`` line (no traceback) containing every needle; returns the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def trained(sample_shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trusted") / "run"
    proc = run(train_command(sample_shards, run_dir, "schedule.train_steps=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def reseal(tag_dir: Path, name: str) -> None:
    """What an attacker can do: make manifest.json agree with an edited file."""
    manifest = json.loads((tag_dir / "manifest.json").read_text())
    data = (tag_dir / name).read_bytes()
    manifest["files"][name] = len(data)
    manifest["digests"][name] = "sha256:" + hashlib.sha256(data).hexdigest()
    (tag_dir / "manifest.json").write_text(json.dumps(manifest))


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.distributed
def test_a_pickled_payload_never_runs(run_copy, sample_shards, tmp_path):
    tag_dir = run_copy / "checkpoints" / "global_step2"
    marker = tmp_path / "payload-ran"
    optim = torch.load(tag_dir / OPTIM, weights_only=False)
    optim["extra"] = Payload(marker)
    torch.save(optim, tag_dir / OPTIM)
    reseal(tag_dir, OPTIM)  # the digests agree: only the restricted unpickler stands in the way
    expected = (f"{tag_dir / OPTIM}: contains a pickled object that is not plain tensors/containers (os.system); "
                "refusing to load")
    for cmd in (train_command(sample_shards, run_copy, "schedule.train_steps=3"),
                [sys.executable, CONVERT, "export", str(run_copy / "checkpoints"), str(tmp_path / "export")],
                [sys.executable, CONVERT, "to-universal", str(run_copy / "checkpoints"), str(tmp_path / "universal")],
                [sys.executable, CONVERT, "verify", str(run_copy / "checkpoints")]):
        assert_refused(run(cmd), expected)
        assert not marker.exists(), f"the payload ran under {cmd}"
    assert not (tmp_path / "universal" / "global_step2").exists()


@pytest.mark.distributed
def test_same_size_corruption_is_refused_naming_both_digests(run_copy, sample_shards):
    path = run_copy / "checkpoints" / "global_step2" / MODEL
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 8])
    path.write_bytes(bytes(data))
    error = assert_refused(run(train_command(sample_shards, run_copy, "schedule.train_steps=3")), f"{path}: contents "
                           "changed since it was written")
    assert error.count("sha256:") == 2


def test_the_allow_list_is_what_deepspeed_checkpoints_hold(trained):
    """Every class on the list but the fp16 loss scaler occurs in a bf16 ZeRO-1 checkpoint, and
    nothing else does; a random file is a named error, not an UnpicklingError."""
    tag_dir = trained / "checkpoints" / "global_step2"
    found = set()
    for file in tag_dir.glob("*.pt"):
        found.update(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
        restricted_load(file, name=file)
    allowed = {f"{cls.__module__}.{cls.__name__}" for cls in ALLOWED_GLOBALS}
    assert found == allowed - {"deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"}
    garbage = tag_dir.parent / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(UnsafeCheckpointError, match="garbage.pt: not a readable torch checkpoint file"):
        restricted_load(garbage, name=garbage)


@pytest.mark.parametrize("content", ["", "rubbish\n", "../../other/checkpoints/global_step2", "global_step9",
                                     None])
def test_latest_that_is_not_a_tag_of_its_directory_is_refused(trained, tmp_path, content):
    root = tmp_path / "checkpoints"
    shutil.copytree(trained / "checkpoints", root)
    other = tmp_path / "other" / "checkpoints" / "global_step2"  # another run's checkpoint
    shutil.copytree(root / "global_step2", other)
    if content is None:
        (root / "latest").unlink()
    else:
        (root / "latest").write_text(content)
    with pytest.raises(CheckpointError, match=r"the newest committed checkpoint is .*global_step2: to resume from "
                                              r"it pass --tag global_step2"):
        read_latest(root)


@pytest.mark.distributed
def test_an_emptied_latest_never_restarts_silently(run_copy, sample_shards):
    ckpt = run_copy / "checkpoints"
    (ckpt / "latest").write_text("")
    before = (ckpt / "global_step2" / MODEL).read_bytes()
    assert_refused(run(train_command(sample_shards, run_copy, "schedule.train_steps=3")),
                   f"{ckpt / 'latest'} is empty", "--set checkpoint.load_tag=global_step2",
                   "--set checkpoint.start_over=true")
    assert (ckpt / "global_step2" / MODEL).read_bytes() == before
    assert_refused(run(train_command(sample_shards, run_copy, "schedule.train_steps=3", "checkpoint.resume=false")),
                   "checkpoint.resume=false", "newest global_step2")

    resumed = run(train_command(sample_shards, run_copy, "schedule.train_steps=3", "checkpoint.load_tag=global_step2"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ckpt / 'global_step2'} at step 2" in resumed.stdout
    assert read_latest(ckpt) == "global_step3"

    (ckpt / "latest").write_text("../../elsewhere")
    fresh = run(train_command(sample_shards, run_copy, "schedule.train_steps=2", "checkpoint.start_over=true"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "starting from scratch" in fresh.stdout
    aside = [p for p in ckpt.iterdir() if p.name.startswith("superseded-")]
    assert len(aside) == 1 and {p.name for p in aside[0].iterdir()} >= {"global_step3", "latest"}
    assert read_latest(ckpt) == "global_step2"


@pytest.mark.distributed
def test_one_live_run_per_run_directory(run_copy, sample_shards):
    holder = RunLock(run_copy)
    holder.acquire()
    try:
        assert_refused(run(train_command(sample_shards, run_copy, "schedule.train_steps=3")),
                       f"logging.run_dir {run_copy} is in use by another training run (pid {os.getpid()} on host")
        with pytest.raises(RunDirBusy):
            RunLock(run_copy).acquire()
    finally:
        holder.release()
    metrics = (run_copy / "metrics.jsonl").read_text()

    # A lock left by a process that died (kill -9: never released) is taken over with a warning.
    (run_copy / "run.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": 2 ** 22 + 7,
                                                   "started": "2026-01-01 00:00:00 UTC", "released": False}))
    proc = run(train_command(sample_shards, run_copy, "schedule.train_steps=3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warning: took over the lock {run_copy / 'run.lock'} left by pid {2 ** 22 + 7}" in proc.stderr
    assert (run_copy / "metrics.jsonl").read_text().startswith(metrics)
    assert json.loads((run_copy / "run.lock").read_text())["released"] is True


def test_a_requeued_slurm_job_continues(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    lock = RunLock(tmp_path)
    lock.acquire()
    lock._fd, fd = None, lock._fd  # as if the process had been killed: no release
    os.close(fd)
    assert RunLock(tmp_path).acquire() == f"continuing SLURM job 4242 in {tmp_path} (requeued)"


@pytest.mark.distributed
def test_sigterm_during_start_up_checkpoints_and_exits_75(sample_shards, tmp_path):
    run_dir = tmp_path / "early"
    proc = subprocess.Popen(train_command(sample_shards, run_dir, "schedule.train_steps=50"), env=cpu_env(),
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # run.lock is taken after the handler is installed and before DeepSpeed starts
    stderr = signal_when_ready(proc, (run_dir / "run.lock").exists, signal.SIGTERM)
    assert proc.returncode == EXIT_REQUEUE, stderr[-3000:]
    status = json.loads((run_dir / "exit_status.json").read_text())
    assert status["reason"] == "signal" and status["signal"] == "SIGTERM" and status["step"] == 0
    assert read_latest(run_dir / "checkpoints") == "global_step0"


@pytest.mark.distributed
def test_exports_are_sealed_by_digests(trained, tmp_path):
    out = tmp_path / "export"
    proc = run([sys.executable, CONVERT, "export", str(trained / "checkpoints"), str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / pretrained.MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors", "tokenizer_info.json"}
    load_pretrained(out)

    weights = out / pretrained.WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor: safetensors would read it without complaint
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{weights}: contents changed since it was written"):
        load_pretrained(out)
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    (out / "tokenizer.model").write_bytes(b"planted")
    with pytest.raises(IntegrityError, match="does not list tokenizer.model"):
        load_pretrained(out)


def test_paths_read_from_files_stay_inside(tmp_path):
    (tmp_path / "a").write_text("x")
    assert resolve_inside(tmp_path, "a", source="record") == (tmp_path / "a").resolve()
    for name in ("../../../../etc/passwd", "/etc/passwd", "", "a/../../b"):
        with pytest.raises(IntegrityError, match="record"):
            resolve_inside(tmp_path, name, source="record")
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(IntegrityError, match="points outside"):
        resolve_inside(tmp_path, "link/passwd", source="record")
