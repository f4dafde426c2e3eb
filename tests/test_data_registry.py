"""Dataset kinds come from one registry; every dataset declares the batch keys of its samples."""

import pytest
from test_datasets import write_shard

from megacompress.data import registry
from megacompress.data.blended import BlendedDataset
from megacompress.data.builder import DATASET_KINDS, DataConfig, DataConfigError, build_datasets
from megacompress.data.collate import TOKEN_BATCH_KEYS
from megacompress.data.document_dataset import DocumentDataset, DocumentDatasetConfig
from megacompress.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megacompress.data.registry import dataset_batch_keys, dataset_kind, register_dataset_kind
from megacompress.data.tokenizers import BytesTokenizer

DOCS = [[1, 2, 9, 3, 9, 0], [4, 5, 6, 7, 9, 8, 9, 0], [5, 9, 0]]


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test are dropped afterwards."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))


def test_unknown_kind_lists_registered_kinds(tmp_path):
    with pytest.raises(DataConfigError, match=r"data.kind 'nope': unknown dataset kind; registered kinds: gpt, document, "):
        build_datasets(DataConfig(data_path=[str(tmp_path / "x")], kind="nope"), BytesTokenizer(), 8, [1, 0, 0])


def test_registered_kind_is_built_without_builder_changes(tmp_path, scratch_registry):
    calls = []

    class Constant:
        batch_keys = frozenset({"input_ids", "bits"})

        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    def build(prefix, meta, config, seq_length, num_samples, document_range, tokenizer, cache_dir):
        calls.append((prefix, meta["flags"], config.kind, seq_length, num_samples, document_range, cache_dir))
        return Constant(num_samples)

    assert "constant" not in DATASET_KINDS
    register_dataset_kind("constant", build, {"input_ids", "bits"})
    assert "constant" in DATASET_KINDS and repr(DATASET_KINDS).endswith(", 'constant')")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset_kind("constant", build, {"input_ids"})

    prefix = write_shard(tmp_path / "s", DOCS)
    config = DataConfig(data_path=[prefix], kind="constant", split="2,1,0", cache_dir=str(tmp_path / "c"))
    with pytest.warns(UserWarning, match="meta.json"):
        train, valid, test = build_datasets(config, BytesTokenizer(), 16, [5, 2, 0])
    assert (len(train), len(valid), test) == (5, 2, None)
    assert calls == [(prefix, {"append_eod": False}, "constant", 16, 5, (0, 2), str(tmp_path / "c")),
                     (prefix, {"append_eod": False}, "constant", 16, 2, (2, 3), str(tmp_path / "c"))]
    assert dataset_batch_keys(train) == {"input_ids", "bits"}


def test_batch_keys_match_the_samples(tmp_path):
    with_eos, without = write_shard(tmp_path / "e", DOCS, eos_token=9), write_shard(tmp_path / "n", DOCS)
    gpt = GPTDataset(without, GPTDatasetConfig(seq_length=4, eod_id=0, num_samples=3))
    documents = DocumentDataset(with_eos, DocumentDatasetConfig(seq_length=4, pad_id=0, num_samples=4, eos_id=9))
    plain = DocumentDataset(without, DocumentDatasetConfig(seq_length=4, pad_id=0, num_samples=4))
    assert dataset_batch_keys(gpt) == TOKEN_BATCH_KEYS == set(gpt[0])
    assert dataset_batch_keys(documents) == TOKEN_BATCH_KEYS | {"eos_mask"} == set(documents[0])
    assert dataset_batch_keys(plain) == TOKEN_BATCH_KEYS == set(plain[0])
    assert dataset_kind("gpt").batch_keys == TOKEN_BATCH_KEYS and not dataset_kind("gpt").optional_keys
    assert dataset_kind("document").optional_keys == {"eos_mask"}

    blend = BlendedDataset([documents, documents], [1, 1], 6)
    assert dataset_batch_keys(blend) == set(blend[0]) == TOKEN_BATCH_KEYS | {"eos_mask"}
    assert dataset_batch_keys(BlendedDataset([documents, plain], [1, 0], 3)) == set(documents[0])  # plain unused
    with pytest.raises(ValueError, match=r"n: yields batch keys .* but the other blended datasets yield"):
        BlendedDataset([documents, plain], [1, 1], 6)
    with pytest.raises(TypeError, match="has no batch_keys"):
        dataset_batch_keys(object())
