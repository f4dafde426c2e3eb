"""Batched greedy generation for gist models: from stored gist K/V, or over the full prompt.

Both start with a *packed* prefill (`_prefill_packed`): the batch's prompts are laid end to
end in one row of up to `PREFILL_TOKENS` tokens (a longer prompt runs alone), each a document
of its own, and run in one call; then row b of one batch KV cache gets prompt b's K/V, so the
cache's rows hold different lengths (per-row query offsets in the mask,
`megacompress.models.kv_cache`). No row computes padding however its length differs from the
others', and the weights are read once per packed call, not once per prompt: a 384-token
call costs about 2.3 ms a token on 2 CPU cores, a 45-token prompt alone 6 ms. Each query
still attends over its whole packed row under the dense CPU mask (masked keys cost as much as
visible ones), which the budget keeps to a few percent of the prefill's FLOPs. Decoding is
batched: one forward per new token for all rows, each at its own position.

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

`answer` fits every record to ``max_seq_len`` first (`fit_records`, `InstructionFormat.prompt`:
the end of the input is cut, then the record's new tokens; counted), so a long record is
served, never a failed batch.

Both decode greedily with `megacompress.generation.generate.decode_loop` (a row stops after
``eod_id``; per-step logits on request).
"""

from __future__ import annotations

import torch

from megacompress.data.packing import next_fit
from megacompress.methods.gist.cache import GistEntry
from megacompress.generation.generate import GenerationOutput, check_lengths, decode_loop, length_batches


# Per-token matmul cost stops falling at a few hundred rows on CPU, while attention over the
# packed row grows with it (SmolLM2-135M, 2 cores: 6.0 / 2.7 / 2.3 / 3.0 ms a token at 45 / 180 / 360 / 720).
PREFILL_TOKENS = 384


def _prefill_packed(model, cache, prompts: list[list[int]], *, entries: list[GistEntry] | None = None,
                    gist_starts: list[int] | None = None, budget: int = PREFILL_TOKENS) -> torch.Tensor:
    """Packed prefill (module docstring): row b of ``cache`` gets the K/V of ``prompts[b]``, after
    the gists of ``entries[b]`` (at positions ``prefix_len ..``) or, with ``gist_starts``, under the
    gist mask with the row's gists at ``gist_starts[b]``. Returns the next-token logits [B, Vp/tp]."""
    device = model.output_weight.device
    k = model.config.gist_tokens
    loaded = 0 if entries is None else k  # cached gist slots before each prompt
    logits = []
    for rows in next_fit([loaded + len(p) for p in prompts], min(budget, model.config.max_seq_len)):
        n, lengths = len(rows), torch.tensor([len(prompts[r]) for r in rows])
        starts = lengths.cumsum(0) - lengths  # each prompt's first token in the packed row
        document = torch.arange(n).repeat_interleave(lengths)
        packed = model.new_kv_cache(1, n * loaded + int(lengths.sum()))
        first_position = torch.zeros(n, dtype=torch.long)
        if entries is not None:  # every prompt's gists first, prompt j's as document j
            heads = [entries[r].local_heads() for r in rows]
            packed.load(*([torch.cat([h[side][i] for h in heads], dim=1)[None].to(device)
                           for i in range(packed.num_layers)] for side in (0, 1)),
                        [n * k], document_ids=torch.arange(n).repeat_interleave(k)[None])
            first_position = torch.tensor([entries[r].prefix_len for r in rows])
        span = {}
        if gist_starts is not None:
            gist = starts + torch.tensor([gist_starts[r] for r in rows])
            span = {"gist_start": gist[document][None].to(device), "gist_end": (gist + k)[document][None].to(device)}
        ids = torch.tensor([[t for r in rows for t in prompts[r]]], device=device)
        positions = (first_position[document] + torch.arange(len(document)) - starts[document])[None]
        logits.append(model(ids, positions.to(device), document[None].to(device), kv_cache=packed,
                            logits_index=(starts + lengths - 1)[None], **span).logits[0])
        # Prompt j's slots in the packed cache: its gists, then its tokens (padded to the longest).
        slots = torch.zeros(n, loaded + int(lengths.max()), dtype=torch.long)
        for j in range(n):
            tokens = n * loaded + starts[j] + torch.arange(lengths[j])
            own = torch.cat([torch.arange(j * loaded, (j + 1) * loaded), tokens])
            slots[j, :len(own)] = own
        slots = slots.to(device)
        cache.load(*([t[0][:, slots].transpose(0, 1) for t in side] for side in (packed.k, packed.v)),
                   loaded + lengths, rows=rows)
    return torch.cat(logits)


def _decode(model, cache, first: torch.Tensor, next_pos: torch.Tensor, max_new_tokens: int, eod_id: int | None,
            return_logits: bool, **span) -> GenerationOutput:
    """Greedy batched decoding after `_prefill_packed`: row b's token t at position ``next_pos[b] + t``
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
                    eod_id: int | None = None, return_logits: bool = False,
                    prefill_tokens: int = PREFILL_TOKENS) -> GenerationOutput:
    """Continue ``segments[b]`` (the input segment) after the gists of ``entries[b]``
    (``prefill_tokens``: the packed prefill's budget per call; 1 runs every row alone)."""
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
    first = _prefill_packed(model, cache, segments, entries=entries, budget=prefill_tokens)
    return _decode(model, cache, first, starts + lengths, max_new_tokens, eod_id, return_logits)


@torch.no_grad()
def generate_full(model, prompts: list[list[int]], gist_starts: list[int], max_new_tokens: int, *,
                  eod_id: int | None = None, return_logits: bool = False,
                  prefill_tokens: int = PREFILL_TOKENS) -> GenerationOutput:
    """Continue whole gist prompts (gists at ``gist_starts[b] .. + k``) under the model's gist mask
    (``prefill_tokens`` as in `generate_cached`)."""
    if not prompts or any(not p for p in prompts) or len(gist_starts) != len(prompts):
        raise ValueError("generate_full: one non-empty prompt per gist start")
    k = model.config.gist_tokens
    check_lengths(model.config, prompts, max_new_tokens)
    longest = max(map(len, prompts))
    gist_start = torch.tensor(gist_starts, device=model.output_weight.device)
    cache = model.new_kv_cache(len(prompts), longest + max_new_tokens)
    first = _prefill_packed(model, cache, prompts, gist_starts=gist_starts, budget=prefill_tokens)
    return _decode(model, cache, first, torch.tensor([len(p) for p in prompts]), max_new_tokens, eod_id,
                   return_logits, gist_start=gist_start, gist_end=gist_start + k)


def serving_batches(formatted: list, batch_size: int, *, cached: bool) -> list[list[int]]:
    """Row indices of formatted records in batches of similar length: of the input segment after
    the gists from a cache (`generate_cached`), else of the whole prompt. A decode step attends
    over as many slots as the batch's longest row holds, so like lengths waste least."""
    return length_batches([len(f.tokens) - (f.gist_end if cached else 0) for f in formatted], batch_size)


def fit_records(model, fmt, records: list[dict], max_new_tokens: int) -> tuple[list, list[int], dict]:
    """(prompts fitted to the model's ``max_seq_len``, new tokens each may generate, counts) for
    ``{instruction, input}`` records, by the rule of `InstructionFormat.prompt`: the end of the
    input is cut first, then the record's new-token budget, then the end of the instruction;
    never the gists or the output's start. Counts: ``records``, ``input_truncated`` (records),
    ``input_tokens_cut``, ``instruction_truncated``, ``new_tokens_capped`` (records)."""
    from megacompress.methods.gist.data import InstructionFormat

    if fmt.max_seq_len != model.config.max_seq_len:
        fmt = InstructionFormat(fmt.tokenizer, fmt.k, model.config.max_seq_len)
    formatted, budgets = [], []
    counts = dict.fromkeys(("input_truncated", "input_tokens_cut", "instruction_truncated", "new_tokens_capped"), 0)
    for r in records:
        rec, new_tokens, cuts = fmt.prompt(r["instruction"], r.get("input", ""), max_new_tokens)
        formatted.append(rec)
        budgets.append(new_tokens)
        counts["input_truncated"] += cuts["input_tokens"] > 0
        counts["input_tokens_cut"] += cuts["input_tokens"]
        counts["instruction_truncated"] += cuts["instruction_tokens"] > 0
        counts["new_tokens_capped"] += cuts["new_tokens"] > 0
    return formatted, budgets, {"records": len(records), **counts}


def answer(model, fmt, records: list[dict], max_new_tokens: int, *, cache=None, batch_size: int = 8,
           show_progress: bool = False, counts: dict | None = None) -> list[list[int]]:
    """Greedy output tokens (without the final eod) for ``{instruction, input}`` records, in input
    order: from ``cache`` (anything with ``get(instruction) -> GistEntry``: a `GistCache`, or a dict
    of `compress` results), or with ``cache=None`` over the full prompt under the gist mask. Records
    are batched by length (`serving_batches`). A record too long for ``max_seq_len`` is fitted by
    `fit_records` (never an error); ``counts`` (a dict), when given, receives its counts. A record
    whose new-token budget was cut is batched with others of the same budget only."""
    from megacompress.progress import progress

    eod = fmt.tokenizer.eod
    formatted, budgets, fitted = fit_records(model, fmt, records, max_new_tokens)
    if counts is not None:
        counts.update(fitted)
    outputs: list[list[int]] = [[] for _ in records]
    batches = []
    for budget in sorted(set(budgets), reverse=True):
        rows = [i for i, b in enumerate(budgets) if b == budget]
        batches += [([rows[j] for j in batch], budget)
                    for batch in serving_batches([formatted[i] for i in rows], batch_size, cached=cache is not None)]
    for rows, budget in progress(batches, desc="answer", unit="batch", enabled=show_progress):
        batch = [formatted[i] for i in rows]
        if cache is None:
            out = generate_full(model, [f.tokens for f in batch], [f.gist_start for f in batch], budget, eod_id=eod)
        else:
            entries = [cache.get(records[i]["instruction"]) for i in rows]
            out = generate_cached(model, entries, [f.tokens[f.gist_end:] for f in batch], budget, eod_id=eod)
        for row, tokens in zip(rows, out.tokens):
            outputs[row] = tokens[:-1] if tokens and tokens[-1] == eod else tokens
    return outputs
