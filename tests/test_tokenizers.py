"""Tokenizers: exact GPT-2 ids, specials, lossless round trips, SentencePiece training, fingerprints."""

import functools
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_helpers import REPO_ROOT

from megacompress.data.tokenizers import build_tokenizer, train_sentencepiece

# Any str that UTF-8 can encode (no lone surrogates), including controls and astral chars.
utf8_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)

TRICKY = [
    "",
    " ",
    "  two  spaces\n\n\ttab\r\n",
    "x▁y ▁ ▁▁",
    "\x00\x01 é 中文 😀 \ufffd \u200b",
    "<|endoftext|> <|endofsentence|> <GIST>",
    " leading",
    "trailing  ",
    "1234567 3.14",
]


@pytest.fixture(scope="module")
def gpt2():
    return build_tokenizer("gpt2")


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    lines = open(REPO_ROOT / "data/sample/train.jsonl").readlines()[:40]
    corpus = d / "corpus.txt"
    corpus.write_text("".join(json.loads(l)["text"] + "\n" for l in lines))
    return train_sentencepiece([str(corpus)], str(d / "sp"), vocab_size=1000)


def test_gpt2_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.vocab_size == 50259
    assert gpt2.eod == gpt2.special_id("eod") == gpt2.special_id("pad") == 50256
    assert gpt2.special_id("eos") == 50257 and gpt2.special_id("gist") == 50258
    # Special strings in the text are ordinary text, never special ids.
    assert max(gpt2.encode("<|endoftext|><GIST>")) < 50256
    assert gpt2.decode([50257, 50258, 50256]) == "<|endofsentence|><GIST><|endoftext|>"
    with pytest.raises(KeyError, match="unknown special"):
        gpt2.special_id("bos")


def test_bytes_tokenizer():
    tok = build_tokenizer("bytes")
    assert tok.encode("aé") == [97, 0xC3, 0xA9]
    assert (tok.eod, tok.special_id("eos"), tok.special_id("gist"), tok.special_id("pad")) == (256, 257, 258, 256)
    assert tok.vocab_size == 259
    assert tok.decode([104, 105, 257]) == "hi<|endofsentence|>"


@pytest.mark.parametrize("kind", ["gpt2", "bytes", "sentencepiece"])
def test_round_trip_tricky(kind, gpt2, sp_model):
    tok = {"gpt2": gpt2, "bytes": build_tokenizer("bytes"), "sentencepiece": build_tokenizer("sentencepiece", sp_model)}[kind]
    for text in TRICKY:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert not set(ids) & {tok.special_id(n) for n in ("eod", "eos", "gist")}
    with pytest.raises(ValueError, match="UTF-8"):
        tok.encode("bad \ud800 surrogate")


def test_sentencepiece_specials_and_sample_round_trip(sp_model, repo_root):
    tok = build_tokenizer("sentencepiece", sp_model)
    assert tok.vocab_size == 1000
    assert tok.eod == tok.special_id("pad")
    assert len({tok.eod, tok.special_id("eos"), tok.special_id("gist")}) == 3
    assert tok.decode([tok.special_id("eos")]) == "<|endofsentence|>"
    for line in open(repo_root / "data/sample/valid.jsonl").readlines()[:5]:
        text = json.loads(line)["text"]
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=150, deadline=None)
@given(utf8_text)
def test_round_trip_property(text):
    for kind in ("gpt2", "bytes"):
        tok = _cached_tokenizer(kind)
        assert tok.decode(tok.encode(text)) == text


@functools.cache
def _cached_tokenizer(kind):
    return build_tokenizer(kind)


def test_sentencepiece_round_trip_property(sp_model):
    tok = build_tokenizer("sentencepiece", sp_model)

    @settings(max_examples=150, deadline=None)
    @given(utf8_text)
    def check(text):
        assert tok.decode(tok.encode(text)) == text

    check()


def test_fingerprint_stable_across_processes(gpt2, sp_model):
    code = (
        "import sys; from megacompress.data.tokenizers import build_tokenizer as b;"
        "print(b('gpt2').fingerprint(), b('bytes').fingerprint(), b('sentencepiece', sys.argv[1]).fingerprint())"
    )
    out = subprocess.run([sys.executable, "-c", code, sp_model], capture_output=True, text=True, check=True)
    sp = build_tokenizer("sentencepiece", sp_model)
    assert out.stdout.split() == [gpt2.fingerprint(), build_tokenizer("bytes").fingerprint(), sp.fingerprint()]
    assert len({gpt2.fingerprint(), sp.fingerprint(), build_tokenizer("bytes").fingerprint()}) == 3


def test_build_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer"):
        build_tokenizer("wordpiece")
    with pytest.raises(ValueError, match="model path"):
        build_tokenizer("sentencepiece")
    with pytest.raises(FileNotFoundError, match="nope.model"):
        build_tokenizer("sentencepiece", str(tmp_path / "nope.model"))


def test_continuation_drops_a_byte_level_prefix_space(tmp_path):
    """A RoBERTa-style tokenizer (ByteLevel with add_prefix_space) spaces every text it encodes;
    a continuation must not get that space, a first piece keeps it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.train_from_iterator(["hello world, hello there"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    ours = build_tokenizer("hf", str(tmp_path))
    assert ours.encode("hello") == tok.encode(" hello").ids
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert ours.encode_continuation("hello") == tok.encode("hello").ids != ours.encode("hello")
