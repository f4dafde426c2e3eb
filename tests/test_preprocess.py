"""Preprocessing end to end: CLI, worker/partition determinism, EOS sidecar, bad-record counts."""

import json
import subprocess
import sys

import numpy as np
import pytest
from distributed_helpers import REPO_ROOT

from megacompress.data.indexed import IndexedDataset
from megacompress.data.preprocess import main
from megacompress.data.tokenizers import build_tokenizer

SAMPLE = REPO_ROOT / "data/sample/train.jsonl"


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """First 12 documents of the bundled sample (Shakespeare + Austen would take too long)."""
    d = tmp_path_factory.mktemp("in")
    lines = open(SAMPLE).readlines()
    path = d / "subset.jsonl"
    path.write_text("".join(lines[:6] + lines[-6:]))
    return path


def _run(tmp_path, name, *args):
    prefix = str(tmp_path / name)
    summary = main(["--output-prefix", prefix, *map(str, args)])
    return prefix + "_text_document", summary


def _files(prefix):
    return {ext: open(prefix + ext, "rb").read() for ext in (".bin", ".idx", ".eos.bin", ".eos.idx")}


def test_split_sentences_identical_for_any_workers_and_partitions(tmp_path, subset):
    common = ["--input", subset, "--append-eod", "--split-sentences", "--chunk-bytes", "20000", "--sentence-train-chars", "50000"]
    one, summary = _run(tmp_path, "w1", *common, "--workers", "1")
    two, _ = _run(tmp_path, "w2", *common, "--workers", "2", "--partitions", "3")
    assert _files(one) == _files(two)
    assert sorted(p.name for p in tmp_path.iterdir() if "w2" in p.name) == [
        f"w2_text_document{ext}" for ext in (".bin", ".eos.bin", ".eos.idx", ".idx", ".meta.json")
    ]

    tok = build_tokenizer("gpt2")
    eos_id = tok.special_id("eos")
    ds, eos = IndexedDataset(one), IndexedDataset(one + ".eos")
    texts = [json.loads(l)["text"] for l in open(subset)]
    assert len(ds) == len(eos) == len(texts) == summary["keys"]["text"]["documents"]
    assert ds.dtype == np.uint16 and eos.dtype == np.int32
    for i, text in enumerate(texts):
        tokens, offsets = ds[i].astype(np.int64), eos[i]
        # EOS offsets are exactly the sentence-end tokens; the document ends with EOS then EOD.
        np.testing.assert_array_equal(np.flatnonzero(tokens == eos_id), offsets)
        assert tokens[-1] == tok.eod and offsets[-1] == len(tokens) - 2
        assert tok.decode([t for t in tokens if t < tok.eod]) == text
    meta = json.load(open(one + ".meta.json"))
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint()
    assert meta["flags"]["split_sentences"] and meta["eos_sidecar"] == "w1_text_document.eos"
    assert meta["counts"]["sentences"] == int(eos.sequence_lengths.sum()) > len(texts)


def test_bad_records_are_counted(tmp_path):
    src = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"text": "Good one.", "title": "A"}).encode(),
        json.dumps({"text": ""}).encode(),  # empty text
        json.dumps({"body": "no text key", "title": "B"}).encode(),
        json.dumps({"text": 42, "title": ["x"]}).encode(),  # non-string
        b"{not json",
        b"\xff\xfe invalid utf-8",
        b"   ",
        b"[1, 2]",
        json.dumps({"text": "lone \ud800 surrogate"}).encode(),
        json.dumps({"text": "Another good one."}).encode(),
    ]
    src.write_bytes(b"\n".join(lines) + b"\n")
    prefix = str(tmp_path / "out")
    summary = main(["--input", str(src), "--output-prefix", prefix, "--json-keys", "text", "title", "--tokenizer", "bytes"])
    assert summary["records"] == {
        "records": 10, "blank_line": 1, "invalid_utf8": 1, "invalid_json": 1, "not_an_object": 1,
    }
    assert summary["keys"]["text"] == {
        "documents": 2, "tokens": 26, "sentences": 0, "missing_key": 1, "non_string": 1, "invalid_unicode": 1, "empty": 1,
    }
    assert summary["keys"]["title"]["documents"] == 2 and summary["keys"]["title"]["missing_key"] == 3
    text = IndexedDataset(prefix + "_text_document")
    assert bytes(text[1].tolist()) == b"Another good one."
    assert IndexedDataset(prefix + "_title_document").dtype == np.uint16
    meta = json.load(open(prefix + "_title_document.meta.json"))
    assert meta["counts"]["non_string"] == 1 and meta["counts"]["records"]["invalid_json"] == 1


def test_txt_is_one_document_per_file_and_sentencepiece(tmp_path):
    from megacompress.data.tokenizers import train_sentencepiece

    (tmp_path / "a.txt").write_text("Line one.\nLine two.\n")
    (tmp_path / "b.txt").write_text("Second file.")
    model = train_sentencepiece([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], str(tmp_path / "sp"), vocab_size=300)
    prefix, summary = _run(tmp_path, "txt", "--input", str(tmp_path / "*.txt"), "--tokenizer", "sentencepiece", "--tokenizer-model", model, "--append-eod")
    tok = build_tokenizer("sentencepiece", model)
    ds = IndexedDataset(prefix)
    assert len(ds) == 2
    assert tok.decode(ds[0].tolist()) == "Line one.\nLine two.\n<|endoftext|>"


def test_cli_help_and_missing_input(tmp_path):
    env_cmd = [sys.executable, str(REPO_ROOT / "tools/preprocess_data.py")]
    assert "--split-sentences" in subprocess.run(env_cmd + ["--help"], capture_output=True, text=True, check=True).stdout
    res = subprocess.run(env_cmd + ["--input", str(tmp_path / "nope*.jsonl"), "--output-prefix", str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode != 0 and "nope*.jsonl: glob matches no file" in res.stderr
    assert list(tmp_path.iterdir()) == []
