"""Batched autoregressive generation with a KV cache.

Rows of different prompt lengths are *left-padded* to the longest prompt P:
row i with prompt length L_i has padding in slots 0 .. P-L_i-1 (``document_ids`` -1,
invisible to every real query) and its tokens at slots P-L_i .. P-1 with
``position_ids`` 0 .. L_i-1; generated token t (t = 0, 1, ...) of every row sits in slot
P+t with position L_i+t. So each row computes exactly what it would compute alone,
and every row of the cache has the same length (see `megacompress.models.kv_cache.KVCache`).

Any registered model works that has ``config`` (``vocab_size``, ``max_seq_len``),
``output_weight``, ``new_kv_cache(batch, max_len)`` and
``forward(input_ids, position_ids, document_ids, kv_cache=...)`` returning `ModelOutput`.

A row stops after producing ``eod_id``; it keeps being fed ``eod_id`` (its outputs are
ignored) until every row has stopped or ``max_new_tokens`` is reached.

Tensor parallelism: every TP rank runs this with the same prompts and sampling seed;
logits are gathered to the full vocabulary before sampling, so all ranks draw the same
token from identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from megacompress.generation.sampling import SamplingConfig, sample_next
from megacompress.models.outputs import gather_logits
from megacompress.progress import progress


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # new tokens per row, up to and including eod_id if produced
    step_logits: list[torch.Tensor] = field(default_factory=list)  # per step [B, V] fp32, if requested


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts -> (input_ids, position_ids, document_ids), each [B, P] int64 (layout above)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    position_ids = torch.zeros_like(input_ids)
    document_ids = torch.full_like(input_ids, -1)
    for row, prompt in enumerate(prompts):
        start = longest - len(prompt)
        input_ids[row, start:] = torch.tensor(prompt, dtype=torch.long)
        position_ids[row, start:] = torch.arange(len(prompt))
        document_ids[row, start:] = 0
    return input_ids, position_ids, document_ids


@torch.no_grad()
def generate(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, *,
             sampling: SamplingConfig | None = None, eod_id: int | None = None,
             return_logits: bool = False, show_progress: bool = False) -> GenerationOutput:
    """Continue each prompt by up to ``max_new_tokens`` tokens (greedy by default)."""
    sampling = sampling or SamplingConfig()
    config = model.config
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    pad_id = 0 if eod_id is None else eod_id
    input_ids, position_ids, document_ids = left_pad(prompts, pad_id)
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    if total > config.max_seq_len:
        raise ValueError(f"longest prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) = {total} "
                         f"exceeds the model's max_seq_len {config.max_seq_len}")
    device = model.output_weight.device
    cache = model.new_kv_cache(batch, total)
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    lengths = torch.tensor([len(p) for p in prompts], device=device)

    logits = model(input_ids.to(device), position_ids.to(device), document_ids.to(device), kv_cache=cache).logits
    out = GenerationOutput(tokens=[[] for _ in range(batch)])
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in progress(range(max_new_tokens), desc="generate", unit="token", enabled=show_progress):
        last = gather_logits(logits[:, -1], config.vocab_size).float()  # [B, V]
        if return_logits:
            out.step_logits.append(last.cpu())
        token = sample_next(last, sampling, generator)
        if eod_id is not None:
            token = token.masked_fill(finished, eod_id)
        for row in (~finished).nonzero().flatten().tolist():
            out.tokens[row].append(int(token[row]))
        if eod_id is not None:
            finished |= token == eod_id
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        logits = model(token[:, None], (lengths + step)[:, None], torch.zeros_like(token)[:, None],
                       kv_cache=cache).logits
    return out
