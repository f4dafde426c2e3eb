"""The ``chunk`` architecture: the baseline `GPT` under the ``chunk_causal`` mask.

Only the mask differs from `GPT` (embedding, blocks, head, TP, DP, save / load, KV cache are
the GPT's), so ``prepare_mask`` is all it overrides: over a full sequence and over KV-cache
slots alike, it derives the chunks from the (slot) ``document_ids`` and ``config.chunk_size``.
Batch inputs are the GPT's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megacompress.attention import dispatch
from megacompress.models.config import ModelConfig, register_preset
from megacompress.models.gpt import GPT
from megacompress.models.registry import register_architecture
from plugins.chunk_method.masks import KIND, chunk_ids


@dataclass
class ChunkConfig(ModelConfig):
    """`ModelConfig` + the number of tokens per attention chunk."""

    chunk_size: int = 0


@register_architecture("chunk", inputs=("input_ids", "position_ids", "document_ids", "labels"),
                       mask_kinds=(KIND,), config=ChunkConfig)
class ChunkGPT(GPT):
    """GPT whose tokens attend only inside their chunk (module docstring)."""

    @staticmethod
    def validate_config(config: ChunkConfig) -> list[str]:
        if not 1 <= config.chunk_size <= config.max_seq_len:
            return [f"chunk_size must be in 1..max_seq_len ({config.max_seq_len}) for architecture 'chunk', "
                    f"got {config.chunk_size}"]
        return []

    def prepare_mask(self, batch: int, seq_len: int, device: torch.device, dtype: torch.dtype,
                     document_ids: torch.Tensor | None = None,
                     q_offset: int | torch.Tensor | None = None) -> dispatch.PreparedMask:
        if document_ids is None:
            document_ids = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
        document_ids = document_ids.to(device)
        mask = dispatch.AttentionMask.build(KIND, document_ids=document_ids,
                                            chunk_ids=chunk_ids(document_ids, self.config.chunk_size),
                                            q_len=seq_len, q_offset=0 if q_offset is None else q_offset)
        return dispatch.prepare(mask, backend=self.config.attention_backend, device=device, dtype=dtype)


# Bytes tokenizer with this plugin loaded: 256 bytes + eod, eos, <GIST>, <CHUNK> = 260 ids.
register_preset("tiny-chunk", dict(vocab_size=260, hidden_size=32, num_layers=2, num_heads=2, ffn_hidden_size=64,
                                   max_seq_len=64, architecture="chunk", chunk_size=8))
