"""The ``chunk`` dataset kind: the ``gpt`` kind's samples with ``<CHUNK>`` in front.

Sample i is the GPT dataset's sample i of ``seq_length - 1`` tokens, preceded by ``<CHUNK>``,
which joins the sample's first document piece (its positions shift by one) and predicts the
piece's first token. Prompts get the same marker (`generation.encode_prompts`).
"""

from __future__ import annotations

import numpy as np

from megacompress.data.collate import TOKEN_BATCH_KEYS
from megacompress.data.registry import dataset_kind, register_dataset_kind


class ChunkDataset:
    batch_keys = TOKEN_BATCH_KEYS

    def __init__(self, inner, marker: int):
        self.inner, self.marker = inner, marker

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        s = self.inner[index]
        first_piece = (s["document_ids"] == 0).astype(s["position_ids"].dtype)

        def front(value, rest):
            return np.concatenate([np.asarray([value], dtype=rest.dtype), rest])

        return {"input_ids": front(self.marker, s["input_ids"]),
                "labels": front(s["input_ids"][0], s["labels"]),
                "position_ids": front(0, s["position_ids"] + first_piece),
                "document_ids": front(0, s["document_ids"])}


def build_chunk(prefix, meta, config, seq_length, num_samples, document_range, tokenizer, cache_dir):
    inner = dataset_kind("gpt").build(prefix, meta, config, seq_length - 1, num_samples, document_range,
                                      tokenizer, cache_dir)
    return ChunkDataset(inner, tokenizer.special_id("chunk"))


register_dataset_kind("chunk", build_chunk, TOKEN_BATCH_KEYS)
