"""Bitstream shards through the CLIs: every scheme round-trips, resumes, refuses another M1, names corruption."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from distributed_helpers import as_command
from workers.equal_info_m1 import save_tiny_m1

from megacompress.methods.equal_info import compress as compress_mod
from megacompress.methods.equal_info.decompress import main as decompress_main
from megacompress.data.indexed import IndexedDataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    texts = [json.loads(line)["text"][:700] for line in (REPO / "data/sample/valid.jsonl").open()][:12]
    texts += ["", "ünïcödé ✓ 日本語", "x"]
    path = d / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts) + "not json\n")
    return path, texts, save_tiny_m1(d / "m1"), save_tiny_m1(d / "m1b", seed=1)


def compress(corpus, out, *extra):
    path, _, m1, _ = corpus
    return compress_mod.main(["--m1", str(m1), "--input", str(path), "--output-prefix", str(out), *extra])


def decoded(prefix, m1, out):
    decompress_main(["--m1", str(m1), "--input-prefix", str(prefix), "--output", str(out)])
    return [json.loads(line)["text"] for line in out.open()]


@pytest.mark.parametrize("scheme,vocab", [("equal_info", 65536), ("equal_info", 256), ("ac", 65536),
                                          ("static_ac", 256), ("gzip", 65536), ("bytes", 65536)])
def test_every_scheme_round_trips(corpus, tmp_path, scheme, vocab):
    summary = compress(corpus, tmp_path / "s", "--scheme", scheme, "--vocab", str(vocab), "--partitions", "3")
    prefix = tmp_path / "s_text_document"
    shard = IndexedDataset(str(prefix))
    assert shard.dtype == (np.uint8 if vocab == 256 else np.uint16) and len(shard) == len(corpus[1])
    meta = json.loads((tmp_path / "s_text_document.meta.json").read_text())
    assert meta["codec"]["scheme"] == scheme and meta["skipped"]["invalid_json"] == 1
    assert (meta["m1"] is not None) == (scheme in ("equal_info", "ac"))
    assert summary["keys"]["text"]["bytes"] == sum(len(t.encode()) for t in corpus[1])
    assert decoded(prefix, corpus[2], tmp_path / "out.jsonl") == corpus[1]


def test_resume_and_worker_counts_give_identical_shards(corpus, tmp_path, monkeypatch):
    compress(corpus, tmp_path / "one", "--partitions", "4", "--workers", "1")
    compress(corpus, tmp_path / "two", "--partitions", "3", "--workers", "2")
    real = compress_mod._compress_partition

    def dies_on_partition_2(job):
        if job[0] == 2:
            raise RuntimeError("killed")
        return real(job)

    monkeypatch.setattr(compress_mod, "_compress_partition", dies_on_partition_2)
    with pytest.raises(RuntimeError):
        compress(corpus, tmp_path / "re", "--partitions", "4")
    monkeypatch.setattr(compress_mod, "_compress_partition", real)
    summary = compress(corpus, tmp_path / "re", "--partitions", "4")
    assert summary["resumed_partitions"] == 2
    for name in ("two", "re"):
        for ext in (".bin", ".idx", ".docs.bin"):
            a = (tmp_path / f"one_text_document{ext}").read_bytes()
            assert a == (tmp_path / f"{name}_text_document{ext}").read_bytes(), (name, ext)


def test_refuses_another_m1_and_names_a_corrupt_document(corpus, tmp_path, capsys):
    compress(corpus, tmp_path / "s")
    prefix = tmp_path / "s_text_document"
    cli = [sys.executable, str(REPO / "tools/decompress_corpus.py"), "--input-prefix", str(prefix),
           "--output", str(tmp_path / "o.jsonl")]
    with pytest.raises(SystemExit) as info:
        as_command(decompress_main, ["--m1", str(corpus[3]), "--input-prefix", str(prefix), "--output", str(tmp_path / "o.jsonl")])
    assert info.value.code == 2 and "s_text_document.meta.json: shard was compressed with M1" in capsys.readouterr().err
    shard = IndexedDataset(str(prefix))
    offset = int(shard.sequence_pointers[4]) + 2 * 5  # a token inside document 4
    data = bytearray((tmp_path / "s_text_document.bin").read_bytes())
    data[offset] ^= 0x5A
    (tmp_path / "s_text_document.bin").write_bytes(bytes(data))
    bad = subprocess.run(cli + ["--m1", str(corpus[2])], capture_output=True, text=True)
    assert bad.returncode == 2 and "s_text_document.bin: contents changed since it was written" in bad.stderr, \
        bad.stderr
    # Without the recorded digests (a shard written before them), the document's crc32 names it.
    meta_file = tmp_path / "s_text_document.meta.json"
    meta_file.write_text(json.dumps({k: v for k, v in json.loads(meta_file.read_text()).items() if k != "files"}))
    with pytest.raises(SystemExit) as info:
        as_command(decompress_main, ["--m1", str(corpus[2]), "--input-prefix", str(prefix), "--output", str(tmp_path / "o.jsonl")])
    assert info.value.code == 2 and "s_text_document.bin: document 4" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
