"""Batched greedy generation for gist models: from stored gist K/V, or over the full prompt.

`generate_cached` (gist caching). Row b starts from its instruction's `GistEntry`: the
KV cache is loaded with the k gist entries (slots 0..k-1, keys rotated at their original
positions), then the row's input segment (``"\\nInput: ...\\nOutput:"``) is prefilled at
positions ``prefix_len[b] ..``, right-padded to the longest segment of the batch (padding
slots: ``document_ids`` -1, invisible), so one batch mixes instructions and inputs of any
lengths; every later token continues at the row's own position. The cache holds only the
gists and what follows them, so the document-causal mask over its slots is exactly the
gist mask, and the logits equal `generate_full` with the ``gist`` variant.

`generate_full` (``--no-cache``; with ``pos_control`` also the uncompressed baseline):
whole prompts, left-padded as in `megacompress.generation.generate`, with the model's gist
mask (``gist_start`` / ``gist_end`` in slot coordinates) in prefill and in every decode step.

Both decode greedily with `megacompress.generation.generate.decode_loop` (a row stops after
``eod_id``; per-step logits on request).
"""

from __future__ import annotations

import torch

from megacompress.generation.gist_cache import GistEntry
from megacompress.generation.generate import GenerationOutput, decode_loop, left_pad, length_batches


def _check_length(model, needed: int) -> None:
    if needed > model.config.max_seq_len:
        raise ValueError(f"prompt + max_new_tokens = {needed} positions exceed the model's max_seq_len "
                         f"{model.config.max_seq_len}")


@torch.no_grad()
def generate_cached(model, entries: list[GistEntry], segments: list[list[int]], max_new_tokens: int, *,
                    pad_id: int, eod_id: int | None = None, return_logits: bool = False) -> GenerationOutput:
    """Continue ``segments[b]`` (the input segment) after the gists of ``entries[b]``."""
    if len(entries) != len(segments) or not segments or any(not s for s in segments):
        raise ValueError("generate_cached: one non-empty input segment per gist entry")
    batch, k = len(segments), entries[0].keys.shape[2]
    longest = max(map(len, segments))
    starts = torch.tensor([e.prefix_len for e in entries])
    lengths = torch.tensor([len(s) for s in segments])
    _check_length(model, int((starts + lengths).max()) + max_new_tokens)
    device = model.output_weight.device
    cache = model.new_kv_cache(batch, k + longest + max_new_tokens)
    layers = range(entries[0].keys.shape[0])
    cache.load([torch.stack([e.keys[i] for e in entries]).to(device) for i in layers],
               [torch.stack([e.values[i] for e in entries]).to(device) for i in layers], [k] * batch)
    ids = torch.full((batch, longest), pad_id, dtype=torch.long)
    docs = torch.full_like(ids, -1)
    for row, segment in enumerate(segments):
        ids[row, :len(segment)], docs[row, :len(segment)] = torch.tensor(segment), 0
    positions = (starts[:, None] + torch.arange(longest)).masked_fill(docs < 0, 0)
    first = model(ids.to(device), positions.to(device), docs.to(device), kv_cache=cache,
                  logits_index=lengths - 1).logits[:, -1]
    next_pos = (starts + lengths).to(device)
    zeros = torch.zeros(batch, 1, dtype=torch.long, device=device)

    def step(token: torch.Tensor, t: int, finished: torch.Tensor) -> torch.Tensor:
        return model(token[:, None], (next_pos + t)[:, None], zeros, kv_cache=cache).logits[:, -1]

    return decode_loop(first, step, max_new_tokens, model.config.vocab_size, eod_id=eod_id,
                       return_logits=return_logits)


@torch.no_grad()
def generate_full(model, prompts: list[list[int]], gist_starts: list[int], max_new_tokens: int, *,
                  pad_id: int, eod_id: int | None = None, return_logits: bool = False) -> GenerationOutput:
    """Continue whole gist prompts (gists at ``gist_starts[b] .. + k``) under the model's gist mask."""
    k = model.config.gist_tokens
    input_ids, position_ids, document_ids = left_pad(prompts, pad_id)
    batch, width = input_ids.shape
    _check_length(model, max(map(len, prompts)) + max_new_tokens)
    device = model.output_weight.device
    pads = torch.tensor([width - len(p) for p in prompts])
    gist_start = (pads + torch.tensor(gist_starts)).to(device)
    gist_end = gist_start + k
    cache = model.new_kv_cache(batch, width + max_new_tokens)
    logits = model(input_ids.to(device), position_ids.to(device), document_ids.to(device), gist_start=gist_start,
                   gist_end=gist_end, kv_cache=cache, logits_index=torch.full((batch,), width - 1)).logits
    next_pos = torch.tensor([len(p) for p in prompts], device=device)
    zeros = torch.zeros(batch, 1, dtype=torch.long, device=device)

    def step(token: torch.Tensor, t: int, finished: torch.Tensor) -> torch.Tensor:
        return model(token[:, None], (next_pos + t)[:, None], zeros, gist_start=gist_start, gist_end=gist_end,
                     kv_cache=cache).logits[:, -1]

    return decode_loop(logits[:, -1], step, max_new_tokens, model.config.vocab_size, eod_id=eod_id,
                       return_logits=return_logits)


def serving_batches(formatted: list, batch_size: int, *, cached: bool) -> list[list[int]]:
    """Row indices of formatted records in batches grouped by the width each batch is padded to:
    the input segment after the gists from a cache (`generate_cached`), else the whole prompt."""
    return length_batches([len(f.tokens) - (f.gist_end if cached else 0) for f in formatted], batch_size)


def answer(model, fmt, records: list[dict], max_new_tokens: int, *, cache=None, batch_size: int = 8,
           show_progress: bool = False) -> list[list[int]]:
    """Greedy output tokens (without the final eod) for ``{instruction, input}`` records, in input
    order: from ``cache`` (anything with ``get(instruction) -> GistEntry``: a `GistCache`, or a dict
    of `compress` results), or with ``cache=None`` over the full prompt under the gist mask. Records
    are batched by the length each batch is padded to (the input segment from a cache, else the
    whole prompt), so a long record does not make its batch compute padding."""
    from megacompress.progress import progress

    tok = fmt.tokenizer
    pad, eod = tok.special_id("pad"), tok.eod
    formatted = [fmt.format(r["instruction"], r.get("input", "")) for r in records]
    outputs: list[list[int]] = [[] for _ in records]
    batches = serving_batches(formatted, batch_size, cached=cache is not None)
    for rows in progress(batches, desc="answer", unit="batch", enabled=show_progress):
        batch = [formatted[i] for i in rows]
        if cache is None:
            out = generate_full(model, [f.tokens for f in batch], [f.gist_start for f in batch], max_new_tokens,
                                pad_id=pad, eod_id=eod)
        else:
            entries = [cache.get(records[i]["instruction"]) for i in rows]
            out = generate_cached(model, entries, [f.tokens[f.gist_end:] for f in batch], max_new_tokens,
                                  pad_id=pad, eod_id=eod)
        for row, tokens in zip(rows, out.tokens):
            outputs[row] = tokens[:-1] if tokens and tokens[-1] == eod else tokens
    return outputs
