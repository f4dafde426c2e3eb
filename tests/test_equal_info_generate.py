"""Text from an Equal-Info M2: ``megacompress generate`` on an exported bitstream M2.

The M2 here is a random tiny GPT whose output rows are zero except for the window tokens
that real text compresses to, so its greedy tokens are windows this M1 decodes (a random
token need not be one) and vary with the context."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from distributed_helpers import REPO_ROOT, cpu_env
from workers.equal_info_m1 import save_tiny_m1

from megacompress.data.tokenizers import build_tokenizer, model_tokenizer, save_tokenizer
from megacompress.generation.generate import generate
from megacompress.generation.uncached import generate_uncached
from megacompress.methods.equal_info.codec import CodecError, build_codec
from megacompress.methods.equal_info.compress import main as compress_main
from megacompress.methods.equal_info.m1 import M1
from megacompress.models import pretrained
from megacompress.models.config import ModelConfig
from megacompress.models.gpt import GPT
from megacompress.models.registry import load_pretrained

PROMPTS = ["The quick brown fox", "Once upon a time, in a land far away, there lived", "Ü"]


def _texts(n=12, chars=300):
    lines = (REPO_ROOT / "data/sample/train.jsonl").read_text().splitlines()
    return [json.loads(line)["text"][:chars] for line in lines[:n]]


def _m2(directory, tokenizer, allowed: set[int], seed=0):
    """A random M2 whose logits are 0 for every id outside ``allowed`` (so argmax is one of them)."""
    config = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                         ffn_hidden_size=64, max_seq_len=256)
    model = GPT(config, seed=seed)
    with torch.no_grad():
        keep = torch.zeros(model.output_weight.shape[0], dtype=torch.bool)  # padded vocabulary
        keep[sorted(allowed)] = True
        model.output_weight[~keep] = 0
        model.output_weight[keep] *= 50
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, str(directory))
    pretrained.seal(directory)
    return directory


@pytest.fixture(scope="module", params=[65536, 256], ids=["v65536", "v256"])
def m2(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"eqgen{request.param}")
    m1 = save_tiny_m1(d / "m1")
    (d / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts()))
    compress_main(["--m1", str(m1), "--input", str(d / "c.jsonl"), "--output-prefix", str(d / "eq"),
                   "--window-bits", "16", "--vocab", str(request.param)])
    meta = str(d / "eq_text_document.meta.json")
    tokenizer = build_tokenizer("bitstream", meta).with_m1(M1(m1))
    per_window = 16 // tokenizer.config.token_bits
    windows = {tuple(ids[i:i + per_window]) for t in _texts() for ids in [tokenizer.encode(t)]
               for i in range(0, len(ids), per_window)}
    allowed = {w[0] for w in windows} if per_window == 1 else set(range(256))
    return _m2(d / "m2", tokenizer, allowed), m1, tokenizer


def _generate(model, tokenizer, prompts, n, mode=generate):
    return mode(model, [tokenizer.encode(p) for p in prompts], n, eod_id=tokenizer.eod).tokens


def test_export_records_the_bitstream_and_generate_needs_its_m1(m2, tmp_path):
    directory, m1, tokenizer = m2
    recorded = model_tokenizer(str(directory))
    assert recorded.fingerprint() == tokenizer.fingerprint() and (directory / "bitstream.json").is_file()
    with pytest.raises(CodecError, match="no M1 loaded"):
        recorded.encode("x")
    other = save_tiny_m1(tmp_path / "other", seed=1)
    with pytest.raises(CodecError, match="is not the M1 of"):
        recorded.with_m1(M1(other))
    # A fresh process that reads the record first (nothing has loaded the methods yet) knows the kind.
    fresh = subprocess.run([sys.executable, "-c", "import sys; from megacompress.data.tokenizers import "
                            "model_tokenizer; print(model_tokenizer(sys.argv[1]).name)", str(directory)],
                           env=cpu_env(), capture_output=True, text=True, timeout=120)
    assert fresh.stdout.strip() == "bitstream", fresh.stderr[-2000:]


def test_greedy_text_is_the_decoded_teacher_forced_argmax(m2):
    directory, m1, tokenizer = m2
    if tokenizer.config.vocab != 65536:
        pytest.skip("a random M2 over 8-bit tokens makes windows that need not decode")
    model = load_pretrained(directory).eval()
    prompt = tokenizer.encode(PROMPTS[0])
    new = generate(model, [prompt], 20, eod_id=tokenizer.eod).tokens[0]
    sequence = torch.tensor([prompt + new])
    logits = model(sequence, torch.arange(sequence.shape[1])[None], torch.zeros_like(sequence)).logits
    argmax = logits[0, len(prompt) - 1:-1].argmax(-1).tolist()
    assert argmax == new
    tokens = np.array([t for t in argmax if t < tokenizer.config.vocab], np.int64)
    (decoded,) = build_codec(tokenizer.config, M1(m1)).decode([(tokens, -1, len(tokens))])  # decompress's decoder
    assert tokenizer.decode(new) == decoded.decode("utf-8", errors="replace") and decoded


def test_fast_equals_slow_and_a_batch_equals_each_alone(m2):
    directory, _, tokenizer = m2
    model = load_pretrained(directory).eval()
    batch = _generate(model, tokenizer, PROMPTS, 12)
    assert batch == _generate(model, tokenizer, PROMPTS, 12, mode=generate_uncached)
    assert batch == [_generate(model, tokenizer, [p], 12)[0] for p in PROMPTS]


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "megacompress", "generate", *map(str, args)], cwd=REPO_ROOT,
                          env=cpu_env(), capture_output=True, text=True, timeout=300)
    return proc


def test_generate_command_prints_whole_windows(m2, tmp_path):
    directory, m1, tokenizer = m2
    model = load_pretrained(directory).eval()
    n = 9  # odd: with two tokens per window the last window is half made
    tokens = _generate(model, tokenizer, PROMPTS[:1], n)[0]
    expected = tokenizer.decode(tokens)
    if tokenizer.config.vocab == 256:
        assert tokenizer.decode(tokens[:8]) == expected
    for mode in ("fast", "slow"):
        proc = _cli("--model", directory, "--m1", m1, "--prompt", PROMPTS[0], "--max-new-tokens", n, "--mode", mode)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout == f"=== prompt: {PROMPTS[0]!r}\n{PROMPTS[0]}{expected}\n"
    missing = _cli("--model", directory, "--m1", tmp_path / "nowhere", "--prompt", "x")
    assert missing.returncode == 2 and "nowhere (--m1) is not a directory" in missing.stderr
    wrong = _cli("--model", directory, "--m1", save_tiny_m1(tmp_path / "other", seed=1), "--prompt", "x")
    assert wrong.returncode == 2 and "is not the M1 of" in wrong.stderr and "Traceback" not in wrong.stderr
