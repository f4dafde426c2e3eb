"""Preprocessing end to end: CLI, worker/partition determinism, EOS sidecar, bad-record counts,
multi-key alignment, reusing the sentence model."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from distributed_helpers import REPO_ROOT, as_command

from megacompress.data.document_dataset import DocumentDataset, DocumentDatasetConfig
from megacompress.data.indexed import IndexedDataset
from megacompress.data.preprocess import _train_splitter, main
from megacompress.data.tokenizers import build_tokenizer

SAMPLE = REPO_ROOT / "data/sample/train.jsonl"
VALID = REPO_ROOT / "data/sample/valid.jsonl"


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
    exts = (".bin", ".idx", ".eos.bin", ".eos.idx", ".sentences.json")
    return {ext: open(prefix + ext, "rb").read() for ext in exts}


def test_split_sentences_identical_for_any_workers_and_partitions(tmp_path, subset):
    common = ["--input", subset, "--append-eod", "--split-sentences", "--chunk-bytes", "20000", "--sentence-train-chars", "50000"]
    one, summary = _run(tmp_path, "w1", *common, "--workers", "1")
    two, _ = _run(tmp_path, "w2", *common, "--workers", "2", "--partitions", "3")
    assert _files(one) == _files(two)
    assert sorted(p.name for p in tmp_path.iterdir() if "w2" in p.name) == [
        f"w2_text_document{ext}" for ext in (".bin", ".eos.bin", ".eos.idx", ".idx", ".meta.json", ".sentences.json")
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
        json.dumps({"text": "Good one."}).encode(),
        json.dumps({"text": ""}).encode(),  # empty text: an empty document
        json.dumps({"body": "no text key"}).encode(),
        json.dumps({"text": 42}).encode(),  # non-string
        b"{not json",
        b"\xff\xfe invalid utf-8",
        b"   ",
        b"[1, 2]",
        json.dumps({"text": "lone \ud800 surrogate"}).encode(),
        json.dumps({"text": "Another good one."}).encode(),
    ]
    src.write_bytes(b"\n".join(lines) + b"\n")
    prefix = str(tmp_path / "out")
    summary = main(["--input", str(src), "--output-prefix", prefix, "--tokenizer", "bytes", "--append-eod"])
    assert summary["records"] == {
        "records": 10, "blank_line": 1, "invalid_utf8": 1, "invalid_json": 1, "not_an_object": 1, "incomplete": 3,
    }
    assert summary["keys"]["text"] == {
        "documents": 3, "tokens": 28, "sentences": 0, "empty_documents": 1,
        "missing_key": 1, "non_string": 1, "invalid_unicode": 1,
    }
    text = IndexedDataset(prefix + "_text_document")
    assert text.dtype == np.uint16 and text.sequence_lengths.tolist() == [10, 0, 18]  # no EOD on the empty one
    assert bytes(text[2].tolist()[:-1]) == b"Another good one."
    meta = json.load(open(prefix + "_text_document.meta.json"))
    assert meta["counts"]["non_string"] == 1 and meta["counts"]["records"]["invalid_json"] == 1
    assert meta["counts"]["empty_documents"] == 1 and meta["sentence_model"] is None


# Alpaca-like: many empty inputs, one record without "input", one with a non-string output.
ALPACA = [
    {"instruction": "Give three tips. Be brief.", "input": "", "output": "Eat well. Sleep. Move."},
    {"instruction": "Translate to English.", "input": "Bonjour. Merci.", "output": "Hello. Thanks."},
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "This record has no input key.", "output": "Skipped for every key."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": 5},
    {"instruction": "Summarise.", "input": "A long text. Really long.", "output": ""},
    {"instruction": "", "input": "", "output": "Only an output."},
]
ALPACA_KEYS = ["instruction", "input", "output"]


def test_multi_key_documents_stay_aligned(tmp_path):
    """Document i of every key's shard comes from the same record; empty fields are empty documents."""
    src = tmp_path / "alpaca.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:3]) + "\n" + "".join(json.dumps(r) + "\n" for r in ALPACA[3:]))
    out = str(tmp_path / "alpaca")
    summary = main(["--input", str(src), "--output-prefix", out, "--json-keys", *ALPACA_KEYS, "--tokenizer", "bytes",
                    "--append-eod", "--split-sentences", "--workers", "2", "--partitions", "2", "--chunk-bytes", "100"])
    kept = [r for r in ALPACA if all(isinstance(r.get(k), str) for k in ALPACA_KEYS)]
    assert len(kept) == 5
    tok = build_tokenizer("bytes")
    for key in ALPACA_KEYS:
        prefix = f"{out}_{key}_document"
        ds, eos = IndexedDataset(prefix), IndexedDataset(prefix + ".eos")
        assert len(ds) == len(eos) == len(kept)
        for i, record in enumerate(kept):
            tokens = ds[i].astype(np.int64)
            assert bytes(t for t in tokens.tolist() if t < 256).decode() == record[key], (key, i)
            assert len(tokens) == 0 if record[key] == "" else tokens[-1] == tok.eod
            np.testing.assert_array_equal(np.flatnonzero(tokens == tok.special_id("eos")), eos[i])
        counts = json.load(open(prefix + ".meta.json"))["counts"]
        assert counts == summary["keys"][key] | {"records": summary["records"]}
        assert counts["documents"] == len(kept)
        assert counts["empty_documents"] == sum(r[key] == "" for r in kept)
        # Downstream: the sidecar check and the chunking accept the empty documents (and skip them).
        docs = DocumentDataset(prefix, DocumentDatasetConfig(seq_length=16, pad_id=tok.eod, eos_id=tok.special_id("eos")))
        assert set(docs.chunks[:, 0].tolist()) == {i for i, r in enumerate(kept) if r[key]}
    assert summary["records"]["incomplete"] == 2 and summary["records"]["blank_line"] == 1
    assert summary["keys"]["input"]["missing_key"] == 1 and summary["keys"]["output"]["non_string"] == 1
    assert summary["keys"]["input"]["empty_documents"] == 3


def _sentence_run(tmp_path, name, source, *extra):
    prefix, _ = _run(tmp_path, name, "--input", source, "--tokenizer", "bytes", "--split-sentences",
                     "--sentence-train-chars", "30000", *extra)
    return prefix, json.load(open(prefix + ".meta.json"))


def test_valid_split_with_the_train_sentence_model(tmp_path):
    train_src, valid_src = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train_src.write_text("".join(open(SAMPLE).readlines()[:4]))
    valid_src.write_text("".join(open(VALID).readlines()[:3]))
    train, train_meta = _sentence_run(tmp_path, "train", train_src)
    model_file = train + ".sentences.json"
    digest = hashlib.sha256(open(model_file, "rb").read()).hexdigest()
    assert train_meta["sentence_model"] == {"file": "train_text_document.sentences.json", "sha256": digest,
                                            "loaded_from": None}

    valid, valid_meta = _sentence_run(tmp_path, "valid", valid_src, "--sentence-model", model_file)
    assert valid_meta["sentence_model"]["sha256"] == digest
    assert valid_meta["sentence_model"]["loaded_from"] == "train_text_document.sentences.json"
    assert valid_meta["flags"]["sentence_train_chars"] is None
    assert open(valid + ".sentences.json", "rb").read() == open(model_file, "rb").read()
    # Valid is cut exactly as the model trained on train cuts it.
    train_splitter, _ = _train_splitter([str(train_src)], "text", 30000)
    tok = build_tokenizer("bytes")
    ds = IndexedDataset(valid)
    for i, line in enumerate(open(valid_src)):
        expected = [t for sentence in train_splitter.split(json.loads(line)["text"])
                    for t in [*tok.encode(sentence), tok.special_id("eos")]]
        assert ds[i].tolist() == expected
    # Retraining on valid (the old behaviour) gives another model.
    _, retrained = _sentence_run(tmp_path, "retrained", valid_src)
    assert retrained["sentence_model"]["sha256"] != digest


@pytest.mark.parametrize("content, message", [
    ("{not json", "invalid sentence model JSON"),
    (json.dumps({"format": "megacompress-punkt", "version": 1, "abbrev_types": "mr", "collocations": [],
                 "sent_starters": [], "ortho_context": {}}), '"abbrev_types" must be a list of strings'),
])
def test_invalid_sentence_model_is_a_clear_error(tmp_path, capsys, content, message):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "One. Two."}) + "\n")
    bad = tmp_path / "bad.sentences.json"
    bad.write_text(content)
    with pytest.raises(SystemExit) as info:
        as_command(main, ["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "out"), "--tokenizer", "bytes",
              "--split-sentences", "--sentence-model", str(bad)])
    assert info.value.code == 2 and f"error: {bad}: {message}" in capsys.readouterr().err
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize("records", ["", json.dumps({"title": "no text key"}) + "\n"])
def test_zero_documents_is_an_error_and_leaves_no_shard(tmp_path, capsys, records):
    (tmp_path / "in.jsonl").write_text(records)
    with pytest.raises(SystemExit) as info:
        as_command(main, ["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "out"), "--tokenizer", "bytes"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "error: no document written, so no shard was kept" in err
    assert f"missing_key {1 if records else 0}" in err and "done: 0 documents" in err
    assert not list(tmp_path.glob("out*"))


def test_a_directory_as_input_is_named_as_such(tmp_path, capsys):
    with pytest.raises(SystemExit):
        as_command(main, ["--input", str(tmp_path), "--output-prefix", str(tmp_path / "out")])
    assert f"{tmp_path}: is a directory; give its files or a glob such as" in capsys.readouterr().err


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
    assert res.returncode == 2 and "nope*.jsonl: glob matches no file" in res.stderr
    assert list(tmp_path.iterdir()) == []
