"""Bits/byte of bytes and SentencePiece shards, M2 tokens -> text, and the tiny M1 config trains."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from megacompress.methods.equal_info.compress import main as compress_main
from megacompress.methods.equal_info.evaluate import bits_per_byte
from megacompress.methods.equal_info.m1 import M1
from megacompress.methods.equal_info.tokenizer import BitstreamTokenizer
from megacompress.data.preprocess import main as preprocess_main
from megacompress.data.tokenizers import build_tokenizer, train_sentencepiece
from megacompress.models import GPT, ModelConfig

REPO = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"}


def sample_texts(n=6, chars=400):
    texts = [json.loads(line)["text"][:chars] for line in (REPO / "data/sample/valid.jsonl").open()][:n]
    return texts + ["naïve — ünïcode ✓"]  # multi-byte characters: bytes are counted as UTF-8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_texts()))
    return d


def random_model(vocab_size):
    return GPT(ModelConfig(vocab_size=vocab_size, hidden_size=32, num_layers=1, num_heads=2, ffn_hidden_size=64,
                           max_seq_len=64), seed=0)


@pytest.mark.parametrize("kind", ["bytes", "sentencepiece"])
def test_bits_per_byte_of_token_shards_counts_the_original_bytes(corpus, tmp_path, kind):
    sp = None
    if kind == "sentencepiece":
        (tmp_path / "c.txt").write_text("\n".join(sample_texts()))
        sp = train_sentencepiece([str(tmp_path / "c.txt")], str(tmp_path / "sp"), vocab_size=400)
    preprocess_main(["--input", str(corpus / "c.jsonl"), "--output-prefix", str(tmp_path / kind), "--tokenizer", kind,
                     "--append-eod", *(["--tokenizer-model", sp] if sp else [])])
    tokenizer = build_tokenizer(kind, sp)
    result = bits_per_byte(random_model(tokenizer.vocab_size), str(tmp_path / f"{kind}_text_document"), sp)
    texts = sample_texts()
    assert result["documents"] == len(texts) and result["tokenizer"] == kind
    assert result["bytes"] == sum(len(t.encode()) for t in texts)
    tokens = sum(len(tokenizer.encode(t)) for t in texts)
    assert result["tokens"] == tokens + len(texts)  # every document's tokens and its closing eod
    assert result["bytes_per_token"] == pytest.approx(result["bytes"] / tokens)
    # A random model is ~uniform over its vocabulary.
    assert result["bits_per_byte"] == pytest.approx(math.log2(tokenizer.vocab_size) * result["tokens"]
                                                    / result["bytes"], rel=0.1)


@pytest.fixture(scope="module")
def tiny_m1(tmp_path_factory):
    """configs/tiny_m1.yaml trained for 3 steps with the engine and exported."""
    d = tmp_path_factory.mktemp("tiny_m1")
    (d / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_texts(20, 2000)))
    preprocess_main(["--input", str(d / "c.jsonl"), "--output-prefix", str(d / "data"), "--tokenizer", "bytes",
                     "--append-eod"])
    train = subprocess.run([sys.executable, "-m", "megacompress.train", "--config", "configs/tiny_m1.yaml",
                            "--set", f"data.data_path=[{d / 'data_text_document'}]",
                            "--set", f"eval.data_path=[{d / 'data_text_document'}]", "--set", "schedule.train_steps=3",
                            "--set", "schedule.global_batch_size=4", "--set", f"logging.run_dir={d / 'run'}",
                            "--set", "logging.progress_bar=false"],
                           cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    export = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "export", str(d / "run/checkpoints"),
                             str(d / "export")], cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    return d / "export"


def test_tiny_m1_config_trains_an_m1(tiny_m1):
    m1 = M1(tiny_m1)
    assert (m1.config.num_layers, m1.config.hidden_size, m1.max_context) == (2, 64, 128)


@pytest.mark.parametrize("vocab", [65536, 256])
def test_bitstream_tokenizer_decodes_m2_tokens_to_text(tiny_m1, tmp_path, vocab):
    text = "naïve ✓ " + sample_texts(1, 600)[0]  # ends in ASCII: a cut-off window ends on a whole character
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": text}) + "\n")
    compress_main(["--m1", str(tiny_m1), "--input", str(tmp_path / "c.jsonl"), "--output-prefix",
                   str(tmp_path / "eq"), "--window-bits", "16", "--vocab", str(vocab)])
    tokenizer = BitstreamTokenizer.from_meta_file(str(tmp_path / "eq_text_document.meta.json"), load_m1=True)
    ids = tokenizer.encode(text)
    # What M2 generates: codec tokens, possibly closed by eod (a special, dropped on decoding).
    assert tokenizer.decode(ids + [tokenizer.eod]) == text
    if vocab == 256:  # two tokens per window: a trailing half window is ignored, never guessed
        assert text.startswith(tokenizer.decode(ids[:-1])) and len(tokenizer.decode(ids[:-1])) < len(text)


def test_bitstream_decode_refuses_greedy_windows(tiny_m1, tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    compress_main(["--m1", str(tiny_m1), "--input", str(tmp_path / "c.jsonl"), "--output-prefix", str(tmp_path / "g"),
                   "--rule", "greedy"])
    tokenizer = BitstreamTokenizer.from_meta_file(str(tmp_path / "g_text_document.meta.json"), load_m1=True)
    with pytest.raises(ValueError, match="delay rule"):
        tokenizer.decode(tokenizer.encode("hello"))
