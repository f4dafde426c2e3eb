"""Sharded preprocessing: ``--partitions N --partition-index I`` packs partition I alone and
``--merge`` joins them, byte-identical to one process; a missing or mismatched partition
is refused by name. (On SLURM, as an array + merge: tests/test_slurm_preprocess.py.)"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from distributed_helpers import REPO_ROOT, as_command
from megacompress.data import preprocess

SHARD_FILES = (".bin", ".idx", ".eos.bin", ".eos.idx", ".meta.json", ".sentences.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("partitions") / "docs.jsonl"
    with open(REPO_ROOT / "data" / "sample" / "train.jsonl") as f:
        path.write_text("".join(itertools.islice(f, 30)))
    return path


def pack_argv(corpus: Path, prefix: Path, *extra: str) -> list[str]:
    return ["--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer", "bytes", "--append-eod",
            "--split-sentences", "--chunk-bytes", "4096", *extra]


def pack(corpus: Path, prefix: Path, *extra: str) -> dict:
    return preprocess.main(pack_argv(corpus, prefix, *extra))


def refused(corpus: Path, prefix: Path, capsys, *extra: str) -> str:
    """Run ``pack`` expecting a user error (exit 2); returns its ``error: ...`` line."""
    with pytest.raises(SystemExit) as exit_:
        as_command(preprocess.main, pack_argv(corpus, prefix, *extra))  # as its command line runs it
    assert exit_.value.code == 2
    return capsys.readouterr().err


def shard_bytes(prefix: Path) -> dict[str, bytes]:
    return {ext: Path(f"{prefix}_text_document{ext}").read_bytes() for ext in SHARD_FILES}


def test_each_partition_alone_then_merge_is_byte_identical(corpus, tmp_path):
    pack(corpus, tmp_path / "one" / "x")
    for index in (2, 0, 1):  # any order, as separate processes would finish
        part = pack(corpus, tmp_path / "parts" / "x", "--partitions", "3", "--partition-index", str(index))
        assert part["keys"]["text"]["documents"] > 0
        assert not Path(f"{tmp_path}/parts/x_text_document.meta.json").exists()  # only the merge writes it
    merged = pack(corpus, tmp_path / "parts" / "x", "--partitions", "3", "--merge")
    assert merged["keys"]["text"]["documents"] == 30
    assert shard_bytes(tmp_path / "parts" / "x") == shard_bytes(tmp_path / "one" / "x")
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == sorted(f"x_text_document{e}" for e in SHARD_FILES)


def test_merge_refuses_a_missing_or_mismatched_partition(corpus, tmp_path, capsys):
    prefix = tmp_path / "x"
    pack(corpus, prefix, "--partitions", "2", "--partition-index", "0")
    assert re.search(r"error: partition 1 of 2 is missing: no .*x\.part0001-of-0002\.json \(pack it again with "
                     r"--partitions 2 --partition-index 1", refused(corpus, prefix, capsys, "--partitions", "2", "--merge"))
    preprocess.main(["--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer", "bytes",
                     "--split-sentences", "--partitions", "2", "--partition-index", "1"])  # no --append-eod
    assert re.search(r"partition 1 of 2 \(.*x\.part0001-of-0002\.json\) does not match the merge: append_eod is "
                     r"False there, True here", refused(corpus, prefix, capsys, "--partitions", "2", "--merge"))
    record = json.loads(Path(f"{prefix}.part0000-of-0002.json").read_text())
    assert record["partition"] == 0 and record["stats"]["records"] > 0
    Path(f"{prefix}_text_document.part0000-of-0002.eos.bin").unlink()  # an unfinished partition
    pack(corpus, prefix, "--partitions", "2", "--partition-index", "1")
    assert re.search(r"partition 0 of 2: .*part0000-of-0002\.eos\.bin is missing",
                     refused(corpus, prefix, capsys, "--partitions", "2", "--merge"))


@pytest.mark.parametrize("flags,message", [
    (["--partitions", "2", "--partition-index", "2"], r"--partition-index 2 is not in \[0, --partitions 2\)"),
    (["--partitions", "2", "--partition-index", "0", "--merge"], "give one of them"),
    (["--merge"], "--merge needs --partitions N"),
])
def test_partition_flag_errors(corpus, tmp_path, capsys, flags, message):
    assert re.search(message, refused(corpus, tmp_path / "x", capsys, *flags))
