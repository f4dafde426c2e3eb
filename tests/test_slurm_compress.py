"""Corpus-scale Equal-Info compression: ``--partition-index`` / ``--merge`` by hand, and
``tools/compress_slurm.py`` on the two-node cluster (one array task per node, then the
merge), each byte-identical to one process."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from distributed_helpers import REPO_ROOT, assert_same_shards
from workers.equal_info_m1 import save_tiny_m1

from megacompress import cli
from megacompress.methods.equal_info.compress import main as compress_main

SHARD_FILES = (".bin", ".idx", ".docs.bin", ".docs.idx", ".meta.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(input .jsonl, M1 directory, prefix of the one-process shards)."""
    out = tmp_path_factory.mktemp("slurm_compress")
    path = out / "docs.jsonl"
    with open(REPO_ROOT / "data" / "sample" / "train.jsonl") as f:
        path.write_text("".join(json.dumps({"text": json.loads(line)["text"][:3000]}) + "\n"
                                for line in itertools.islice(f, 30)))
    m1 = save_tiny_m1(out / "m1")
    compress_main(flags(path, m1, out / "one" / "x"))
    return path, m1, out / "one" / "x"


def flags(corpus: Path, m1: Path, prefix: Path) -> list[str]:
    return ["--m1", str(m1), "--input", str(corpus), "--output-prefix", str(prefix), "--partitions", "2"]


def test_partitions_by_hand_then_merge_is_byte_identical(corpus, tmp_path, capsys):
    path, m1, reference = corpus
    prefix = tmp_path / "x"

    def run(argv):
        return cli.run(compress_main, argv)

    assert run([*flags(path, m1, prefix), "--merge"]) == 2
    assert "partitions [0, 1] of 2 are not compressed" in capsys.readouterr().err
    for index in (1, 0, 1):  # the second run of partition 1 finds it committed
        assert run([*flags(path, m1, prefix), "--partition-index", str(index)]) == 0
    assert "partition 1 of 2: already committed" in capsys.readouterr().out
    assert run([*flags(path, m1, prefix), "--partition-index", "2"]) == 2
    assert run([*flags(path, m1, prefix), "--merge"]) == 0
    assert_same_shards(prefix, reference, SHARD_FILES)


@pytest.mark.slurm
def test_array_of_partitions_then_merge_is_byte_identical(slurm_cluster_2n, corpus, tmp_path):
    path, m1, reference = corpus
    prefix = tmp_path / "x"
    cmd = [sys.executable, "tools/compress_slurm.py", "--partition", "debug", "--time", "10", "--wait",
           *flags(path, m1, prefix)]
    proc = subprocess.run(cmd, env=slurm_cluster_2n, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "submitted partitions [0, 1] of 2" in proc.stdout and "merged 2 partition(s)" in proc.stdout, proc.stdout
    assert_same_shards(prefix, reference, SHARD_FILES)
    bad = subprocess.run([*cmd[:-len(flags(path, m1, prefix))], *flags(path, m1, prefix), "--merge"],
                         env=slurm_cluster_2n, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "leave it out" in bad.stderr and "Traceback" not in bad.stderr
