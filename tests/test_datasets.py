"""GPT / document / blended datasets, the index cache and the dataset builder."""

import json
import os

import numpy as np
import pytest
import torch

from distributed_helpers import REPO_ROOT, run_torchrun
from megacompress.data.blended import BlendedDataset, blend_counts, blend_indices
from megacompress.data.builder import DataConfig, DataConfigError, build_datasets
from megacompress.data.document_dataset import DocumentDataset, DocumentDatasetConfig
from megacompress.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megacompress.data.indexed import IndexedDatasetWriter
from megacompress.data.tokenizers import BytesTokenizer

EOD = 0
PINNED_SHUFFLE = [12, 14, 51, 35, 32, 6]  # GPTDataset order for seed 5 in test_gpt_determinism_and_seed


def write_shard(prefix, docs, eos_token=None):
    """Shard of ``docs``; with ``eos_token``, also the sentence sidecar of its positions."""
    with IndexedDatasetWriter(str(prefix), np.uint16) as writer:
        for doc in docs:
            writer.add_document(np.asarray(doc))
    if eos_token is not None:
        with IndexedDatasetWriter(f"{prefix}.eos", np.int32) as writer:
            for doc in docs:
                writer.add_document(np.flatnonzero(np.asarray(doc) == eos_token))
    return str(prefix)


def write_meta(prefix, tokenizer, append_eod):
    meta = {"tokenizer": {"name": tokenizer.name, "fingerprint": tokenizer.fingerprint(),
                          "vocab_size": tokenizer.vocab_size}, "flags": {"append_eod": append_eod}}
    with open(f"{prefix}.meta.json", "w") as f:
        json.dump(meta, f)


def as_lists(sample):
    return {k: v.tolist() for k, v in sample.items()}


def random_docs(rng, n, low=1, high=30):
    return [rng.integers(1, 200, size=rng.integers(low, high)) for _ in range(n)]


# ---------------------------------------------------------------- GPT dataset


def test_gpt_samples_hand_computed(tmp_path):
    # Stream with virtual EODs: 1 2 3 0 | 4 5 0 | 6 7 8 9 0 | (epoch 2) 1 2 3 0 ...
    prefix = write_shard(tmp_path / "s", [[1, 2, 3], [4, 5], [6, 7, 8, 9]])
    config = GPTDatasetConfig(seq_length=4, eod_id=EOD, num_samples=4, shuffle=False, add_eod=True)
    ds = GPTDataset(prefix, config)
    assert len(ds) == 4
    assert as_lists(ds[0]) == {"input_ids": [1, 2, 3, 0], "labels": [2, 3, 0, -100],
                               "position_ids": [0, 1, 2, 3], "document_ids": [0, 0, 0, 0]}
    # Starts inside document 1 (positions restart at 0), crosses into document 2.
    assert as_lists(ds[1]) == {"input_ids": [4, 5, 0, 6], "labels": [5, 0, -100, 7],
                               "position_ids": [0, 1, 2, 0], "document_ids": [0, 0, 0, 1]}
    assert as_lists(ds[2]) == {"input_ids": [7, 8, 9, 0], "labels": [8, 9, 0, -100],
                               "position_ids": [0, 1, 2, 3], "document_ids": [0, 0, 0, 0]}
    assert ds[3]["input_ids"].tolist() == [1, 2, 3, 0]  # second epoch

    # The same shard packed with EOD already appended gives identical samples (EOD not doubled).
    prefix_eod = write_shard(tmp_path / "e", [[1, 2, 3, 0], [4, 5, 0], [6, 7, 8, 9, 0]])
    ds_eod = GPTDataset(prefix_eod, GPTDatasetConfig(seq_length=4, eod_id=EOD, num_samples=4, shuffle=False))
    for i in range(4):
        assert as_lists(ds_eod[i]) == as_lists(ds[i])


def test_gpt_skips_empty_documents_with_or_without_eod(tmp_path):
    # Zero-token documents (empty fields of a multi-key corpus) add nothing, not even a virtual EOD.
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    with_empty = [[], [1, 2, 3], [], [], [4, 5], [6, 7, 8, 9], []]
    for add_eod, suffix in ((True, []), (False, [EOD])):
        config = GPTDatasetConfig(seq_length=4, eod_id=EOD, num_samples=5, shuffle=False, add_eod=add_eod)
        plain = GPTDataset(write_shard(tmp_path / "p", [d + suffix for d in docs]), config)
        sparse = GPTDataset(write_shard(tmp_path / "e", [d + suffix if d else [] for d in with_empty]), config)
        for i in range(5):
            assert as_lists(sparse[i]) == as_lists(plain[i])


def test_gpt_samples_tile_the_stream(tmp_path):
    rng = np.random.default_rng(0)
    docs = random_docs(rng, 40)
    prefix = write_shard(tmp_path / "s", docs)
    S = 16
    ds = GPTDataset(prefix, GPTDatasetConfig(seq_length=S, eod_id=EOD, num_samples=90, seed=3, add_eod=True))
    stream = np.concatenate([np.append(docs[d], EOD) for d in ds.doc_idx])
    doc_of_token = np.concatenate([np.full(len(docs[d]) + 1, k) for k, d in enumerate(ds.doc_idx)])
    pos_in_doc = np.concatenate([np.arange(len(docs[d]) + 1) for d in ds.doc_idx])
    seen = np.zeros(len(ds.sample_idx) - 1, dtype=int)  # whole epochs of samples are built
    for k in range(len(ds)):
        sample, i = ds[k], int(ds.shuffle_idx[k])
        seen[i] += 1
        window = slice(i * S, i * S + S)
        assert sample["input_ids"].tolist() == stream[window].tolist()
        next_tokens = stream[i * S + 1:i * S + S + 1]
        same_doc = doc_of_token[i * S + 1:i * S + S + 1] == doc_of_token[window]
        assert sample["labels"].tolist() == np.where(same_doc, next_tokens, -100).tolist()
        # document ids count pieces; positions restart per piece (first piece starts at 0).
        pieces = doc_of_token[window] - doc_of_token[i * S]
        assert sample["document_ids"].tolist() == pieces.tolist()
        expected_pos = np.where(pieces == 0, pos_in_doc[window] - pos_in_doc[i * S], pos_in_doc[window])
        assert sample["position_ids"].tolist() == expected_pos.tolist()
    assert seen.max() == 1 and seen.sum() == len(ds)


def test_gpt_determinism_and_seed(tmp_path):
    prefix = write_shard(tmp_path / "s", random_docs(np.random.default_rng(1), 30))
    make = lambda seed, cache: GPTDataset(  # noqa: E731
        prefix, GPTDatasetConfig(seq_length=8, eod_id=EOD, num_samples=50, seed=seed, add_eod=True), cache)
    a, b, c = make(5, None), make(5, tmp_path / "cache"), make(6, None)
    for key in ("doc_idx", "sample_idx", "shuffle_idx"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.shuffle_idx, c.shuffle_idx)
    assert not np.array_equal(a.doc_idx, c.doc_idx)
    # Pinned values: the order depends neither on the machine nor on numpy's global RNG.
    np.random.seed(123)
    assert make(5, None).shuffle_idx[:6].tolist() == PINNED_SHUFFLE


def test_index_cache_reuse_and_invalidation(tmp_path):
    prefix = write_shard(tmp_path / "s", random_docs(np.random.default_rng(2), 30))
    cache = tmp_path / "cache"
    config = GPTDatasetConfig(seq_length=8, eod_id=EOD, num_samples=20, add_eod=True)
    first = GPTDataset(prefix, config, cache)
    assert first.cache.built and len(list(cache.glob("GPTDataset-*.npy"))) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    second = GPTDataset(prefix, config, cache)
    assert not second.cache.built
    assert all(isinstance(a, np.memmap) for a in second.cache.arrays.values())
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes
    assert np.array_equal(first.shuffle_idx, second.shuffle_idx)
    other = GPTDataset(prefix, GPTDatasetConfig(seq_length=8, eod_id=EOD, num_samples=21, add_eod=True), cache)
    assert other.cache.built and other.cache.digest != first.cache.digest
    assert len(list(cache.glob("GPTDataset-*.npy"))) == 6
    # A changed shard (same path) gets a new cache entry too.
    write_shard(tmp_path / "s", random_docs(np.random.default_rng(3), 30))
    assert GPTDataset(prefix, config, cache).cache.digest != first.cache.digest
    # An entry whose marker was never written (crash mid-build) is rebuilt.
    (cache / f"GPTDataset-{first.cache.digest}.json").unlink()
    write_shard(tmp_path / "s", random_docs(np.random.default_rng(2), 30))
    assert GPTDataset(prefix, config, cache).cache.built


@pytest.mark.distributed
def test_index_cache_built_by_rank0_mmapped_by_rank1(tmp_path):
    prefix = write_shard(tmp_path / "s", random_docs(np.random.default_rng(4), 50))
    out = tmp_path / "out"
    out.mkdir()
    run_torchrun(REPO_ROOT / "tests/workers/dataset_cache.py", 2,
                 ["--prefix", prefix, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)], timeout=120)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["built"] and not r1["built"]
    assert r1["memmapped"]
    reference = GPTDataset(prefix, GPTDatasetConfig(seq_length=16, eod_id=0, num_samples=40, seed=7))
    for result in (r0, r1):
        assert np.array_equal(result["shuffle_idx"], reference.shuffle_idx)
        for i, sample in enumerate(result["samples"]):
            assert as_lists(sample) == as_lists(reference[i])


# ---------------------------------------------------------------- document dataset

SENT_DOCS = [[1, 2, 9, 3, 9, 0], [4, 5, 6, 7, 9, 8, 9, 0], [5, 9], [7]]  # 9 = EOS, 0 = EOD


def test_document_samples_with_sentences_hand_computed(tmp_path):
    prefix = write_shard(tmp_path / "s", SENT_DOCS, eos_token=9)
    ds = DocumentDataset(prefix, DocumentDatasetConfig(seq_length=4, pad_id=0, shuffle=False, eos_id=9))
    # Chunks (doc, s, t): doc 0 is cut after its first sentence; doc 1's first sentence is longer
    # than S so it is cut mid-sentence; doc 3 has a single token (no target) and is skipped.
    assert ds.chunks.tolist() == [[0, 0, 3], [0, 3, 5], [1, 0, 4], [1, 4, 7], [2, 0, 1]]
    assert as_lists(ds[0]) == {"input_ids": [1, 2, 9, 0], "labels": [2, 9, 3, -100],
                               "position_ids": [0, 1, 2, 0], "document_ids": [0, 0, 0, -1],
                               "eos_mask": [False, False, True, False]}
    assert as_lists(ds[1]) == {"input_ids": [3, 9, 0, 0], "labels": [9, 0, -100, -100],
                               "position_ids": [0, 1, 0, 0], "document_ids": [0, 0, -1, -1],
                               "eos_mask": [False, True, False, False]}
    assert as_lists(ds[3])["eos_mask"] == [True, False, True, False]
    assert as_lists(ds[4]) == {"input_ids": [5, 0, 0, 0], "labels": [9, -100, -100, -100],
                               "position_ids": [0, 0, 0, 0], "document_ids": [0, -1, -1, -1],
                               "eos_mask": [False, False, False, False]}


def test_document_chunks_without_sentences_cover_every_target(tmp_path):
    rng = np.random.default_rng(5)
    docs = random_docs(rng, 25, low=1, high=40)
    prefix = write_shard(tmp_path / "s", docs)
    S = 8
    ds = DocumentDataset(prefix, DocumentDatasetConfig(seq_length=S, pad_id=0, num_samples=None, seed=1))
    assert "eos_mask" not in ds[0]
    targets = {d: {} for d in range(len(docs))}  # doc -> chunk start -> targets
    for k in range(len(ds)):
        sample = ds[k]
        doc, s, t = (int(v) for v in ds.chunks[ds.order[k]])
        n = t - s
        assert 0 < n <= S
        assert sample["input_ids"][:n].tolist() == docs[doc][s:t].tolist()
        assert (sample["document_ids"][n:] == -1).all() and (sample["labels"][n:] == -100).all()
        targets[doc][s] = sample["labels"][:n].tolist()
    for d, doc in enumerate(docs):  # every target exactly once, chunks consecutive
        joined = [x for s in sorted(targets[d]) for x in targets[d][s]]
        assert joined == doc[1:].tolist()


def test_document_epochs_and_missing_sidecar(tmp_path):
    prefix = write_shard(tmp_path / "s", SENT_DOCS)
    ds = DocumentDataset(prefix, DocumentDatasetConfig(seq_length=4, pad_id=0, num_samples=12, seed=2))
    assert len(ds) == 12 and sorted(ds.order[:5].tolist()) == list(range(5))  # full epoch before repeats
    with pytest.raises(Exception, match=r"s\.eos\.idx"):
        DocumentDataset(prefix, DocumentDatasetConfig(seq_length=4, pad_id=0, use_sentences=True, eos_id=9))


# ---------------------------------------------------------------- blending and builder


def test_blend_proportions_and_items(tmp_path):
    weights, size = [0.2, 0.5, 0.3], 1000
    index = blend_indices(weights, size, tmp_path)["dataset_index"]
    for n in (10, 137, 1000):  # every prefix is within one sample of its target share
        counts = np.bincount(index[:n], minlength=3)
        assert np.all(np.abs(counts - np.array(weights) * n) <= 1)

    class Tagged:
        batch_keys = frozenset({"input_ids"})

        def __init__(self, tag, n):
            self.tag, self.n = tag, n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {"input_ids": np.array([self.tag, i])}

    blend = BlendedDataset([Tagged(0, 200), Tagged(1, 500), Tagged(2, 300)], weights, size, tmp_path)
    seen = [tuple(blend[i]["input_ids"]) for i in range(size)]
    assert len(set(seen)) == size  # each component sample used at most once
    with pytest.raises(ValueError, match="needs 500 samples"):
        BlendedDataset([Tagged(0, 200), Tagged(1, 499), Tagged(2, 300)], weights, size)


def test_builder_blend_and_splits(tmp_path):
    tokenizer = BytesTokenizer()
    rng = np.random.default_rng(6)
    a = write_shard(tmp_path / "a", random_docs(rng, 60))
    b = write_shard(tmp_path / "b", [np.append(d, tokenizer.eod) for d in random_docs(rng, 40)])
    write_meta(a, tokenizer, append_eod=False)
    write_meta(b, tokenizer, append_eod=True)
    config = DataConfig(data_path=[0.25, a, 0.75, b], kind="gpt", split="90,10,0", cache_dir=str(tmp_path / "c"))
    train, valid, test = build_datasets(config, tokenizer, seq_length=8, num_samples=[40, 8, 0])
    assert isinstance(train, BlendedDataset) and len(train) == 40 and len(valid) == 8 and test is None
    assert np.bincount(train.dataset_index).tolist() == [10, 30]
    assert train.datasets[0].config.add_eod and not train.datasets[1].config.add_eod
    assert train.datasets[0].document_range == (0, 54) and valid.datasets[0].document_range == (54, 60)
    assert train[0]["input_ids"].shape == (8,)

    doc = build_datasets(DataConfig(data_path=[a], kind="document", split="1,0,0", cache_dir=str(tmp_path / "c")),
                         tokenizer, seq_length=8, num_samples=[30, 0, 0])[0]
    assert isinstance(doc, DocumentDataset) and len(doc) == 30


def test_builder_rejects_tokenizer_mismatch(tmp_path):
    tokenizer = BytesTokenizer()
    prefix = write_shard(tmp_path / "a", random_docs(np.random.default_rng(7), 10))
    write_meta(prefix, tokenizer, append_eod=True)
    with open(f"{prefix}.meta.json") as f:
        meta = json.load(f)
    meta["tokenizer"]["fingerprint"] = "0" * 64
    with open(f"{prefix}.meta.json", "w") as f:
        json.dump(meta, f)
    with pytest.raises(DataConfigError, match=r"a\.meta\.json: shard was tokenized with bytes"):
        build_datasets(DataConfig(data_path=[prefix]), tokenizer, seq_length=8, num_samples=[4, 0, 0])
    # Without meta.json (a Megatron shard) only the vocabulary bound can be checked, with a warning.
    os.remove(f"{prefix}.meta.json")
    with pytest.warns(UserWarning, match=r"a\.meta\.json .*fingerprint cannot be compared"):
        build_datasets(DataConfig(data_path=[prefix]), tokenizer, seq_length=8, num_samples=[4, 0, 0])


def test_builder_on_preprocessed_shard(tmp_path):
    """End to end: preprocess CLI (sentences + EOD) -> builder -> GPTHF-style document samples."""
    from megacompress.data.preprocess import main as preprocess

    source = tmp_path / "docs.jsonl"
    with open(REPO_ROOT / "data/sample/train.jsonl") as f:
        source.write_text("".join(f.readline() for _ in range(4)))
    preprocess(["--input", str(source), "--output-prefix", str(tmp_path / "out"), "--tokenizer", "bytes",
                "--append-eod", "--split-sentences"])
    prefix = str(tmp_path / "out_text_document")
    tokenizer = BytesTokenizer()
    config = DataConfig(data_path=[prefix], kind="document", split="1,0,0")
    train = build_datasets(config, tokenizer, seq_length=64, num_samples=[20, 0, 0])[0]
    assert train.use_sentences and os.path.isdir(tmp_path / "index-cache")  # default cache location
    eos = tokenizer.special_id("eos")
    for i in range(len(train)):
        sample = train[i]
        assert ((sample["input_ids"] == eos) == sample["eos_mask"]).all()
    # Chunks that stop before the document end stop after an EOS, unless one sentence fills the window.
    for doc, s, t in train.chunks.tolist():
        if t < len(train.shard.get(doc)) - 1:
            assert train.shard.get(doc)[t - 1] == eos or t - s == 64
    assert len(train.chunks) > len(train.shard)  # the case was exercised
    gpt = build_datasets(DataConfig(data_path=[prefix], kind="gpt", split="1,0,0"), tokenizer, seq_length=64,
                         num_samples=[5, 0, 0])[0]
    assert not gpt.config.add_eod  # the shard already ends documents with EOD


def test_blend_counts_match_blended_dataset_and_zero_sample_document_part(tmp_path):
    # Weights whose normalisation is not idempotent: the builder's blend_counts and the
    # BlendedDataset must still agree (a tie flipped by one ulp used to need 8 samples of 7).
    weights, size = [1 / 3, 3], 75
    counts = blend_counts(weights, size, tmp_path).tolist()

    class Sized:
        batch_keys = frozenset({"input_ids"})

        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    blend = BlendedDataset([Sized(counts[0]), Sized(counts[1])], weights, size, tmp_path)
    assert np.bincount(blend.dataset_index, minlength=2).tolist() == counts

    tokenizer = BytesTokenizer()
    rng = np.random.default_rng(8)
    a = write_shard(tmp_path / "a", random_docs(rng, 20, low=2))
    b = write_shard(tmp_path / "b", random_docs(rng, 20, low=2))
    for prefix in (a, b):
        write_meta(prefix, tokenizer, append_eod=False)
    config = DataConfig(data_path=[1, a, 1, b], kind="document", split="1,0,0", cache_dir=str(tmp_path / "c"))
    train = build_datasets(config, tokenizer, seq_length=8, num_samples=[1, 0, 0])[0]  # b contributes 0
    assert len(train) == 1 and len(train.datasets[1]) == 0
