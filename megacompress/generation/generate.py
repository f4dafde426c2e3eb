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

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from megacompress.errors import UserError
from megacompress.generation.sampling import SamplingConfig, sample_next
from megacompress.models.outputs import gather_logits
from megacompress.progress import progress


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # new tokens per row, up to and including eod_id if produced
    step_logits: list[torch.Tensor] = field(default_factory=list)  # per step [B, V] fp32, if requested
    kv_cache_bytes: int = 0  # bytes of the KV cache entries held at the end (this TP rank)
    # Wall seconds from emitting token i to emitting token i+1 (one decode step plus sampling; the
    # loop reads every token back to the host, so on CUDA this includes the kernels' completion).
    step_seconds: list[float] = field(default_factory=list)


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


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of up to ``batch_size``, longest first, rows of similar length
    together: a batch is padded to (or a decode step attends over) its longest row, so sorting
    wastes little (and a too-big batch fails at the start). Callers put the results back in
    input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class GenerationRequestError(UserError, ValueError):
    """Prompts or lengths the model cannot serve (a user error: the message says which)."""


def check_lengths(config, prompts: list[list[int]], max_new_tokens: int, offsets: list[int] | None = None) -> None:
    """`GenerationRequestError` unless every prompt + ``max_new_tokens`` fits ``max_seq_len``;
    ``offsets[b]``: positions before prompt b that its cache already holds (e.g. a stored prefix's K/V)."""
    if max_new_tokens < 1:
        raise GenerationRequestError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenerationRequestError("generate: every prompt needs at least one token")
    prompt_len = max(len(p) + (offsets[b] if offsets else 0) for b, p in enumerate(prompts))
    total = prompt_len + max_new_tokens
    if total > config.max_seq_len:
        raise GenerationRequestError(f"longest prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) = {total} "
                         f"exceeds the model's max_seq_len {config.max_seq_len}")


def decode_loop(logits: torch.Tensor, step: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor],
                max_new_tokens: int, vocab_size: int, *, sampling: SamplingConfig | None = None,
                eod_id: int | None = None, return_logits: bool = False, show_progress: bool = False,
                forced_tokens: torch.Tensor | None = None,
                on_tokens: Callable[[list[list[int]]], None] | None = None) -> GenerationOutput:
    """Sample, feed back, repeat: the loop every generation algorithm shares.

    ``logits`` [B, Vp/tp]: the (vocab-sharded) next-token logits after the prompt;
    ``step(token [B], index, finished [B] bool)`` feeds each row's new token and returns
    the next logits [B, Vp/tp]. Rows that produced ``eod_id`` are ``finished``: they are
    fed ``eod_id`` and their outputs are ignored. ``forced_tokens`` [B, max_new_tokens]:
    tokens to emit instead of sampled ones (benchmarks: real text's sentence lengths under
    random weights). ``on_tokens(tokens)``: called after every step with each row's tokens so
    far (streaming output, `megacompress.generation.stream`).
    """
    sampling = sampling or SamplingConfig()
    generator = torch.Generator(device=logits.device).manual_seed(sampling.seed)
    batch = logits.shape[0]
    out = GenerationOutput(tokens=[[] for _ in range(batch)])
    finished = torch.zeros(batch, dtype=torch.bool, device=logits.device)
    for index in progress(range(max_new_tokens), desc="generate", unit="token", enabled=show_progress):
        last = gather_logits(logits, vocab_size).float()  # [B, V]
        if return_logits:
            out.step_logits.append(last.cpu())
        token = sample_next(last, sampling, generator) if forced_tokens is None else forced_tokens[:, index].to(last.device)
        if eod_id is not None:
            token = token.masked_fill(finished, eod_id)
        for row in (~finished).nonzero().flatten().tolist():
            out.tokens[row].append(int(token[row]))
        if on_tokens is not None:
            on_tokens(out.tokens)
        now = time.perf_counter()
        if index:
            out.step_seconds.append(now - emitted)
        emitted = now
        if eod_id is not None:
            finished |= token == eod_id
        if bool(finished.all()) or index == max_new_tokens - 1:
            break
        logits = step(token, index, finished)
    return out


@torch.no_grad()
def generate(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, *,
             sampling: SamplingConfig | None = None, eod_id: int | None = None,
             return_logits: bool = False, show_progress: bool = False,
             forced_tokens: torch.Tensor | None = None,
             on_tokens: Callable[[list[list[int]]], None] | None = None) -> GenerationOutput:
    """Continue each prompt by up to ``max_new_tokens`` tokens (greedy by default)."""
    config = model.config
    check_lengths(config, prompts, max_new_tokens)
    input_ids, position_ids, document_ids = left_pad(prompts, 0 if eod_id is None else eod_id)
    batch, prompt_len = input_ids.shape
    device = model.output_weight.device
    cache = model.new_kv_cache(batch, prompt_len + max_new_tokens)
    lengths = torch.tensor([len(p) for p in prompts], device=device)

    def step(token: torch.Tensor, index: int, finished: torch.Tensor) -> torch.Tensor:
        return model(token[:, None], (lengths + index)[:, None], torch.zeros_like(token)[:, None],
                     kv_cache=cache).logits[:, -1]

    last = torch.full((batch,), prompt_len - 1, device=device)
    logits = model(input_ids.to(device), position_ids.to(device), document_ids.to(device), kv_cache=cache,
                   logits_index=last).logits
    out = decode_loop(logits[:, -1], step, max_new_tokens, config.vocab_size, sampling=sampling, eod_id=eod_id,
                      return_logits=return_logits, show_progress=show_progress, forced_tokens=forced_tokens,
                      on_tokens=on_tokens)
    out.kv_cache_bytes = cache.nbytes()
    return out
