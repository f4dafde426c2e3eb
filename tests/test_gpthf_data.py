"""What GPTHF training needs from the document dataset: one document per sample, long documents
continued at sentence ends, an over-long sentence split *and counted*, padding out of attention
and loss, and an EOS id to check the sentence sidecar against."""

import numpy as np
import pytest

from megacompress.data.document_dataset import DocumentDataset, DocumentDatasetConfig
from megacompress.data.indexed import IndexedDatasetWriter

EOS = 9


def write(prefix, docs):
    for suffix, rows in (("", docs), (".eos", [np.flatnonzero(np.asarray(d) == EOS) for d in docs])):
        with IndexedDatasetWriter(f"{prefix}{suffix}", np.uint16 if not suffix else np.int32) as writer:
            for row in rows:
                writer.add_document(np.asarray(row))
    return str(prefix)


def test_sentence_aligned_chunks_and_counted_cuts(tmp_path):
    # doc 0: sentences of 3, 2, 3 tokens (+ a final token); doc 1: one 9-token sentence (> S = 5).
    docs = [[1, 2, EOS, 3, EOS, 4, 5, EOS, 6], [1, 2, 3, 4, 5, 6, 7, 8, EOS, 1]]
    prefix = write(tmp_path / "s", docs)
    with pytest.warns(UserWarning, match="1 chunk\\(s\\) cut inside a sentence longer than seq_length 5"):
        ds = DocumentDataset(prefix, DocumentDatasetConfig(seq_length=5, pad_id=0, shuffle=False, eos_id=EOS))
    assert ds.cut_sentences == 1
    assert ds.chunks.tolist() == [[0, 0, 5], [0, 5, 8], [1, 0, 5], [1, 5, 9]]
    for k, (doc, s, t) in enumerate(ds.chunks.tolist()):
        sample = ds[k]
        n = t - s
        assert sample["input_ids"][:n].tolist() == docs[doc][s:t]  # one document per sample
        assert sample["labels"][:n].tolist() == docs[doc][s + 1:t + 1]  # every target once
        assert (sample["labels"][n:] == -100).all() and (sample["document_ids"][n:] == -1).all()
        assert sample["eos_mask"].tolist() == [i < n and docs[doc][s + i] == EOS for i in range(5)]
    assert ds[0]["input_ids"][4] == EOS and ds[1]["input_ids"][2] == EOS  # continued at a sentence end
    with pytest.raises(ValueError, match="eos_id is needed to check the sentence sidecar"):
        DocumentDataset(prefix, DocumentDatasetConfig(seq_length=5, pad_id=0))
