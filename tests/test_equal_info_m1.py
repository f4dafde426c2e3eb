"""M1's CDFs: close to the torch model, bit-identical for any batch composition or chunking."""

import json

import numpy as np
import pytest
import torch
from workers.equal_info_m1 import save_tiny_m1

from megacompress.methods.equal_info.m1 import BOS, M1, M1Error
from megacompress.models.registry import load_pretrained


@pytest.fixture(scope="module")
def m1_dir(tmp_path_factory):
    return save_tiny_m1(tmp_path_factory.mktemp("m1"), hidden=64, layers=2)


def test_probabilities_match_torch(m1_dir):
    m1 = M1(m1_dir)
    tokens = np.array([BOS, *b"The quick brown fox jumps."])
    probs = m1.probabilities(m1.new_cache(1, 64), np.zeros(len(tokens)), np.arange(len(tokens)), tokens)
    with torch.no_grad():
        logits = load_pretrained(m1_dir)(torch.tensor(tokens)[None]).logits[0, :, :256]
    np.testing.assert_allclose(probs, torch.softmax(logits.float(), -1).numpy(), atol=1e-5)


def test_cdfs_identical_alone_in_a_batch_and_incremental(m1_dir):
    m1 = M1(m1_dir)
    doc = np.array([BOS, *b"Equal-info windows need bit-identical CDFs on both sides."])
    alone = m1.cdfs(m1.new_cache(1, 64), np.zeros(len(doc)), np.arange(len(doc)), doc)
    # The same row as row 5 of 9, next to rows of other text, in chunks of 7 positions.
    rng = np.random.default_rng(0)
    cache = m1.new_cache(9, 64)
    others = [np.array([BOS, *rng.integers(0, 256, 40)]) for _ in range(9)]
    others[5] = doc
    got = []
    for start in range(0, len(doc), 7):
        rows, pos, tok = [], [], []
        for r, seq in enumerate(others):
            p = np.arange(start, min(start + 7 + r % 3, len(seq)))
            rows += [r] * len(p)
            pos += list(p)
            tok += list(seq[p])
        out = m1.cdfs(cache, np.array(rows), np.array(pos), np.array(tok))
        sel = [i for i, r in enumerate(rows) if r == 5 and pos[i] < start + 7]
        got += [out[i] for i in sel]
    assert (np.stack(got) == alone).all()
    # The decoder's shape: one position per call.
    cache = m1.new_cache(2, 64)
    steps = np.stack([m1.cdfs(cache, [1], [i], [doc[i]])[0] for i in range(len(doc))])
    assert (steps == alone).all()


def test_m1_errors_name_the_directory(tmp_path, m1_dir):
    with pytest.raises(M1Error, match="config.json: missing"):
        M1(tmp_path)
    bad = tmp_path / "gpt2vocab"
    save_tiny_m1(bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["vocab_size"] = 100
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(M1Error, match="bytes tokenizer"):
        M1(bad)
