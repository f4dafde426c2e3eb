"""M2 over bitstream shards: `data.kind=bitstream` trains with the usual engine; bits/byte evaluates."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from workers.equal_info_m1 import save_tiny_m1

from megacompress.methods.equal_info.compress import main as compress_main
from megacompress.methods.equal_info.evaluate import bits_per_byte
from megacompress.data.tokenizers import build_tokenizer
from megacompress.models.registry import load_pretrained

REPO = Path(__file__).resolve().parents[1]


def test_m2_trains_on_bitstream_shards_and_reports_bits_per_byte(tmp_path):
    texts = [json.loads(line)["text"][:800] for line in (REPO / "data/sample/train.jsonl").open()][:20]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    m1 = save_tiny_m1(tmp_path / "m1")
    compress_main(["--m1", str(m1), "--input", str(tmp_path / "c.jsonl"), "--output-prefix", str(tmp_path / "eq"),
                   "--window-bits", "16", "--vocab", "65536"])
    prefix = tmp_path / "eq_text_document"
    tokenizer = build_tokenizer("bitstream", f"{prefix}.meta.json")
    assert tokenizer.vocab_size == 65539 and tokenizer.eod == 65536
    config = {
        "model": {"preset": "tiny", "vocab_size": tokenizer.vocab_size, "hidden_size": 32, "num_layers": 1,
                  "num_heads": 2, "ffn_hidden_size": 64, "max_seq_len": 64},
        "data": {"data_path": [str(prefix)], "kind": "bitstream", "split": "9,1,0"},
        "tokenizer": {"kind": "bitstream", "model_path": f"{prefix}.meta.json"},
        "schedule": {"train_steps": 2, "warmup_steps": 0, "global_batch_size": 2, "micro_batch_size": 2},
        "parallel": {"zero_stage": 0}, "checkpoint": {"interval": 0},
        "logging": {"run_dir": str(tmp_path / "run"), "progress_bar": False}, "eval": {"iters": 1},
    }
    (tmp_path / "m2.yaml").write_text(json.dumps(config))
    env = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"}
    train = subprocess.run([sys.executable, "-m", "megacompress.train", "--config", str(tmp_path / "m2.yaml")],
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    export = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "export", str(tmp_path / "run/checkpoints"),
                             str(tmp_path / "m2")], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    result = bits_per_byte(load_pretrained(tmp_path / "m2"), str(prefix), max_documents=4)
    assert result["bytes"] == sum(len(t.encode()) for t in texts[:4])
    # An untrained M2 predicts ~uniformly over 65,539 ids: ~16 bits per token.
    assert result["bits_per_byte"] == pytest.approx(math.log2(65539) * result["tokens"] / result["bytes"], rel=0.1)


def test_wrong_tokenizer_for_bitstream_kind_is_refused(tmp_path):
    from megacompress.methods.equal_info.dataset import build_bitstream
    from megacompress.data.registry import DataConfigError

    with pytest.raises(DataConfigError, match="tokenizer.kind=bitstream"):
        build_bitstream(str(tmp_path / "x"), {"flags": {}}, None, 8, 1, (0, 1), build_tokenizer("bytes"), None)
