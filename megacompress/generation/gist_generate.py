"""Batched greedy generation for gist models: from stored gist K/V, or over the full prompt.

Both start with a *ragged* prefill (`_prefill_rows`): each row's prompt runs alone at its own
length, so no row computes padding however its length differs from the others', and its
K/V go to row b of one batch KV cache whose rows then hold different lengths (per-row query
offsets in the mask, `megacompress.models.kv_cache`). Decoding is batched: one forward per
new token for all rows, each at its own position. (Rows one by one read the weights once
per row, which costs prefill wall-clock over a padded batch on CPU, docs/gist.md; one packed
varlen call would save both the padding and the re-reads: not done.)

`generate_cached` (gist caching). Row b starts from its instruction's `GistEntry`: its
cache row is loaded with the k gist entries (slots 0..k-1, keys rotated at their original
positions), then the row's input segment (``"\\nInput: ...\\nOutput:"``) is prefilled at
positions ``prefix_len[b] ..``, so one batch mixes instructions and inputs of any lengths;
every later token continues at the row's own position. The cache holds only the gists and
what follows them, so the document-causal mask over its slots is exactly the gist mask, and
the logits equal `generate_full` with the ``gist`` variant.

`generate_full` (``--no-cache``; with ``pos_control`` also the uncompressed baseline):
whole prompts at slots (= positions) 0.., with the model's gist mask (``gist_start`` /
``gist_end``) in prefill and in every decode step.

Both decode greedily with `megacompress.generation.generate.decode_loop` (a row stops after
``eod_id``; per-step logits on request).
"""

from __future__ import annotations

import torch

from megacompress.generation.gist_cache import GistEntry
from megacompress.generation.generate import GenerationOutput, check_lengths, decode_loop, length_batches


def _prefill_rows(model, cache, prompts: list[list[int]], *, entries: list[GistEntry] | None = None,
                  gist_starts: list[int] | None = None) -> torch.Tensor:
    """Ragged prefill (module docstring): row b of ``cache`` gets the K/V of ``prompts[b]`` run
    alone, after the gists of ``entries[b]`` (at positions ``prefix_len ..``) or, with
    ``gist_starts``, under the gist mask with the row's gists at ``gist_starts[b]``. Returns the
    next-token logits [B, Vp/tp]."""
    device = model.output_weight.device
    k = model.config.gist_tokens
    logits = []
    for row, prompt in enumerate(prompts):
        entry = entries[row] if entries else None
        loaded = 0 if entry is None else k
        one = model.new_kv_cache(1, loaded + len(prompt))
        if entry is not None:
            keys, values = entry.local_heads()
            one.load([t[None].to(device) for t in keys], [t[None].to(device) for t in values], [k])
        start = 0 if entry is None else entry.prefix_len
        ids = torch.tensor([prompt], device=device)
        span = {} if gist_starts is None else {"gist_start": torch.tensor([gist_starts[row]], device=device),
                                               "gist_end": torch.tensor([gist_starts[row] + k], device=device)}
        logits.append(model(ids, torch.arange(start, start + len(prompt), device=device)[None], torch.zeros_like(ids),
                            kv_cache=one, logits_index=torch.tensor([len(prompt) - 1]), **span).logits[:, -1])
        cache.load(one.k, one.v, [loaded + len(prompt)], rows=[row])
    return torch.cat(logits)


def _decode(model, cache, first: torch.Tensor, next_pos: torch.Tensor, max_new_tokens: int, eod_id: int | None,
            return_logits: bool, **span) -> GenerationOutput:
    """Greedy batched decoding after `_prefill_rows`: row b's token t at position ``next_pos[b] + t``
    (``span``: the gist mask's ``gist_start`` / ``gist_end``, for the full prompt)."""
    device = model.output_weight.device
    next_pos = next_pos.to(device)
    zeros = torch.zeros(len(next_pos), 1, dtype=torch.long, device=device)

    def step(token: torch.Tensor, t: int, finished: torch.Tensor) -> torch.Tensor:
        return model(token[:, None], (next_pos + t)[:, None], zeros, kv_cache=cache, **span).logits[:, -1]

    return decode_loop(first, step, max_new_tokens, model.config.vocab_size, eod_id=eod_id,
                       return_logits=return_logits)


@torch.no_grad()
def generate_cached(model, entries: list[GistEntry], segments: list[list[int]], max_new_tokens: int, *,
                    eod_id: int | None = None, return_logits: bool = False) -> GenerationOutput:
    """Continue ``segments[b]`` (the input segment) after the gists of ``entries[b]``."""
    if len(entries) != len(segments) or not segments or any(not s for s in segments):
        raise ValueError("generate_cached: one non-empty input segment per gist entry")
    k = entries[0].keys.shape[2]
    if k != model.config.gist_tokens:
        raise ValueError(f"generate_cached: the entries hold {k} gists, the model was made for "
                         f"{model.config.gist_tokens}")
    check_lengths(model.config, segments, max_new_tokens, offsets=[e.prefix_len for e in entries])
    starts = torch.tensor([e.prefix_len for e in entries])
    lengths = torch.tensor([len(s) for s in segments])
    cache = model.new_kv_cache(len(segments), k + int(lengths.max()) + max_new_tokens)
    first = _prefill_rows(model, cache, segments, entries=entries)
    return _decode(model, cache, first, starts + lengths, max_new_tokens, eod_id, return_logits)


@torch.no_grad()
def generate_full(model, prompts: list[list[int]], gist_starts: list[int], max_new_tokens: int, *,
                  eod_id: int | None = None, return_logits: bool = False) -> GenerationOutput:
    """Continue whole gist prompts (gists at ``gist_starts[b] .. + k``) under the model's gist mask."""
    if not prompts or any(not p for p in prompts) or len(gist_starts) != len(prompts):
        raise ValueError("generate_full: one non-empty prompt per gist start")
    k = model.config.gist_tokens
    check_lengths(model.config, prompts, max_new_tokens)
    longest = max(map(len, prompts))
    gist_start = torch.tensor(gist_starts, device=model.output_weight.device)
    cache = model.new_kv_cache(len(prompts), longest + max_new_tokens)
    first = _prefill_rows(model, cache, prompts, gist_starts=gist_starts)
    return _decode(model, cache, first, torch.tensor([len(p) for p in prompts]), max_new_tokens, eod_id,
                   return_logits, gist_start=gist_start, gist_end=gist_start + k)


def serving_batches(formatted: list, batch_size: int, *, cached: bool) -> list[list[int]]:
    """Row indices of formatted records in batches of similar length: of the input segment after
    the gists from a cache (`generate_cached`), else of the whole prompt. A decode step attends
    over as many slots as the batch's longest row holds, so like lengths waste least."""
    return length_batches([len(f.tokens) - (f.gist_end if cached else 0) for f in formatted], batch_size)


def answer(model, fmt, records: list[dict], max_new_tokens: int, *, cache=None, batch_size: int = 8,
           show_progress: bool = False) -> list[list[int]]:
    """Greedy output tokens (without the final eod) for ``{instruction, input}`` records, in input
    order: from ``cache`` (anything with ``get(instruction) -> GistEntry``: a `GistCache`, or a dict
    of `compress` results), or with ``cache=None`` over the full prompt under the gist mask. Records
    are batched by length (`serving_batches`)."""
    from megacompress.progress import progress

    eod = fmt.tokenizer.eod
    formatted = [fmt.format(r["instruction"], r.get("input", "")) for r in records]
    outputs: list[list[int]] = [[] for _ in records]
    batches = serving_batches(formatted, batch_size, cached=cache is not None)
    for rows in progress(batches, desc="answer", unit="batch", enabled=show_progress):
        batch = [formatted[i] for i in rows]
        if cache is None:
            out = generate_full(model, [f.tokens for f in batch], [f.gist_start for f in batch], max_new_tokens, eod_id=eod)
        else:
            entries = [cache.get(records[i]["instruction"]) for i in rows]
            out = generate_cached(model, entries, [f.tokens[f.gist_end:] for f in batch], max_new_tokens, eod_id=eod)
        for row, tokens in zip(rows, out.tokens):
            outputs[row] = tokens[:-1] if tokens and tokens[-1] == eod else tokens
    return outputs
