"""Fast generation for ``chunk`` models: a KV cache that holds only each row's current chunk.

A new token attends to the earlier tokens of its own chunk and nothing else, so a row's K/V
are dropped whenever its next token starts a chunk (its position is a multiple of
``chunk_size``): the decode cache has ``chunk_size`` slots per row however long the text gets.
Prefill runs the (left-padded) prompts once under the chunk mask, then keeps the unfinished
last chunk of each prompt (`KVCache.load`). Rows cross chunk boundaries at different steps;
the cache's per-row lengths handle that. Every step's logits equal a teacher-forced forward
over the sequence (the slow mode), because the cache holds exactly the keys the mask shows.
"""

from __future__ import annotations

import torch
from torch import nn

from megacompress.generation.fast import register_generator
from megacompress.generation.generate import GenerationOutput, check_lengths, decode_loop, left_pad
from megacompress.models.kv_cache import KVCache


def encode_prompts(tokenizer, texts: list[str], args) -> tuple[list[list[int]], dict]:
    """Prompts as the ``chunk`` dataset kind trains on them: ``<CHUNK>`` + the text."""
    marker = tokenizer.special_id("chunk")
    return [[marker] + tokenizer.encode(text) for text in texts], {}


def current_chunks(prefill: KVCache, lengths: torch.Tensor, chunk_size: int, into: KVCache) -> None:
    """Load ``into`` with the K/V of each left-padded prompt's unfinished last chunk
    (``lengths % chunk_size`` tokens; none when the next token starts a chunk)."""
    keep = lengths.cpu() % chunk_size
    width, most = int(prefill.lengths.max()), max(int(keep.max()), 1)
    keys, values = [], []
    for part, out in ((prefill.k, keys), (prefill.v, values)):
        for layer in part:
            kept = layer.new_zeros(layer.shape[0], layer.shape[1], most, layer.shape[3])
            for row, n in enumerate(keep.tolist()):
                if n:
                    kept[row, :, :n] = layer[row, :, width - n:width]
            out.append(kept)
    into.load(keys, values, keep)


@register_generator("chunk", encode_prompts=encode_prompts)
@torch.no_grad()
def generate_chunked(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, *,
                     eod_id: int | None = None, **options) -> GenerationOutput:
    """Greedy/sampled continuation with the per-chunk cache; ``options``: `decode_loop`'s
    (sampling, return_logits, show_progress, forced_tokens)."""
    config = model.config
    check_lengths(config, prompts, max_new_tokens)
    chunk = config.chunk_size
    input_ids, position_ids, document_ids = left_pad(prompts, 0 if eod_id is None else eod_id)
    batch, width = input_ids.shape
    device = model.output_weight.device
    prefill = model.new_kv_cache(batch, width)
    logits = model(input_ids.to(device), position_ids.to(device), document_ids.to(device), kv_cache=prefill,
                   logits_index=torch.full((batch,), width - 1, device=device)).logits[:, -1]
    lengths = torch.tensor([len(p) for p in prompts])
    cache = model.new_kv_cache(batch, chunk)
    current_chunks(prefill, lengths, chunk, cache)
    del prefill

    def step(token: torch.Tensor, index: int, finished: torch.Tensor) -> torch.Tensor:
        positions = lengths + index  # of the token fed now
        starts = (positions % chunk == 0).nonzero().flatten()
        if len(starts):
            cache.reset(starts)
        return model(token[:, None], positions[:, None].to(device), torch.zeros_like(token)[:, None],
                     kv_cache=cache).logits[:, -1]

    out = decode_loop(logits, step, max_new_tokens, config.vocab_size, eod_id=eod_id, **options)
    out.kv_cache_bytes = cache.nbytes()
    return out
