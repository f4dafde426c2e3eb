"""tools/preprocess_slurm.py on the two-node cluster: the partitions as a job array (one
task per node) and the merge after them give the one-process shards byte for byte; a
failed array task cancels the merge, and the printed command reruns it alone (+ merge)."""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distributed_helpers import REPO_ROOT, assert_same_shards
from launch_fixtures import job_field

SHARD_FILES = (".bin", ".idx", ".eos.bin", ".eos.idx", ".meta.json", ".sentences.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(input .jsonl, prefix of its one-process shards)."""
    out = tmp_path_factory.mktemp("slurm_preprocess")
    path = out / "docs.jsonl"
    with open(REPO_ROOT / "data" / "sample" / "train.jsonl") as f:
        path.write_text("".join(itertools.islice(f, 40)))
    subprocess.run([sys.executable, "tools/preprocess_data.py", *flags(path, out / "one" / "x")], cwd=REPO_ROOT,
                   check=True, capture_output=True)
    return path, out / "one" / "x"


def flags(corpus: Path, prefix: Path) -> list[str]:
    return ["--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer", "bytes", "--append-eod",
            "--split-sentences", "--chunk-bytes", "4096"]


def submit(env: dict[str, str], *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "tools/preprocess_slurm.py", "--partition", "debug", "--time", "10", *args]
    return subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slurm
def test_array_of_partitions_then_merge_is_byte_identical(slurm_cluster_2n, corpus, tmp_path):
    prefix = tmp_path / "x"
    proc = submit(slurm_cluster_2n, "--partitions", "2", "--wait", *flags(corpus[0], prefix))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{out}\n{err}"
    assert "submitted partitions [0, 1] of 2" in out and "merged 2 partition(s)" in out, out
    assert_same_shards(prefix, corpus[1], SHARD_FILES)


@pytest.mark.slurm
def test_failed_array_task_cancels_merge_and_reruns_alone(slurm_cluster_2n, corpus, tmp_path):
    prefix = tmp_path / "x"
    proc = submit(slurm_cluster_2n, "--partitions", "2", "--wait", *flags(corpus[0], prefix))
    task = re.search(r"job array (\d+)", proc.stdout.readline()).group(1) + "_1"
    # Cancelled once running (a pending array task that is cancelled leaves no record to poll).
    deadline = time.monotonic() + 120
    while job_field(slurm_cluster_2n, task, "JobState") != "RUNNING":
        assert time.monotonic() < deadline and proc.poll() is None, f"{task} never ran"
        time.sleep(0.1)
    subprocess.run(["scancel", task], env=slurm_cluster_2n, check=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, f"{out}\n{err}"
    assert f"partition 1 (job {task}, CANCELLED) failed" in err, err
    assert Path(f"{prefix}.part0000-of-0002.json").exists()  # the finished partition is kept
    rerun = shlex.split(err.strip().splitlines()[-1])
    assert rerun[1:2] == ["tools/preprocess_slurm.py"] and rerun[-2:] == ["--partition-index", "1"], rerun

    again = subprocess.run(rerun, env=slurm_cluster_2n, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert "submitted partitions [1] of 2" in again.stdout, again.stdout
    assert_same_shards(prefix, corpus[1], SHARD_FILES)
