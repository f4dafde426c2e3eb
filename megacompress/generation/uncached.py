"""Generation without any cache: the full model reruns on the whole sequence for every token.

The reference every cached algorithm must equal (each step *is* a teacher-forced forward
over the sequence so far), the "slow" mode of ``python -m megacompress.generate`` and the
"uncached baseline" of the generation benchmarks. Works for any registered
architecture; one that takes ``eos_mask`` (a sentence-level model) gets the sentence ends of the sequence,
i.e. the positions holding ``eos_id``.
"""

from __future__ import annotations

import torch
from torch import nn

from megacompress.generation.generate import GenerationOutput, check_lengths, decode_loop, left_pad
from megacompress.models.outputs import gather_logits
from megacompress.models.registry import get_architecture


def sequence_inputs(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                    document_ids: torch.Tensor, eos_id: int | None) -> dict[str, torch.Tensor]:
    """forward() keyword arguments for whole (left-padded) sequences, with ``eos_mask`` if the model takes it."""
    inputs = dict(input_ids=input_ids, position_ids=position_ids, document_ids=document_ids)
    if "eos_mask" in get_architecture(model.config.architecture).inputs:
        if eos_id is None:
            raise ValueError(f"architecture {model.config.architecture!r} needs eos_id (the tokenizer's "
                             "<|endofsentence|>) to find sentence ends")
        inputs["eos_mask"] = (input_ids == eos_id) & (document_ids >= 0)
    return inputs


@torch.no_grad()
def generate_uncached(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, *, eod_id: int | None = None,
                      eos_id: int | None = None, **options) -> GenerationOutput:
    """Like `megacompress.generation.generate.generate`, recomputing everything each step; ``options``:
    `generate.decode_loop`'s (sampling, return_logits, show_progress, forced_tokens)."""
    check_lengths(model.config, prompts, max_new_tokens)
    device = model.output_weight.device
    ids, positions, documents = (t.to(device) for t in left_pad(prompts, 0 if eod_id is None else eod_id))
    lengths = torch.tensor([len(p) for p in prompts], device=device)

    def forward() -> torch.Tensor:
        last = torch.full((ids.shape[0],), ids.shape[1] - 1, device=device)
        return model(**sequence_inputs(model, ids, positions, documents, eos_id), logits_index=last).logits[:, -1]

    def step(token: torch.Tensor, index: int, finished: torch.Tensor) -> torch.Tensor:
        nonlocal ids, positions, documents
        ids = torch.cat([ids, token[:, None]], dim=1)
        positions = torch.cat([positions, (lengths + index)[:, None]], dim=1)
        documents = torch.cat([documents, torch.zeros_like(token)[:, None]], dim=1)
        return forward()

    return decode_loop(forward(), step, max_new_tokens, model.config.vocab_size, eod_id=eod_id, **options)


@torch.no_grad()
def teacher_forced_max_diff(model: nn.Module, prompts: list[list[int]], out: GenerationOutput,
                            eos_id: int | None = None) -> float:
    """Max |step logit - logit of one forward over (prompt + generated tokens)| over rows and steps.

    ``out`` needs ``step_logits`` (``return_logits=True``); 0 for a generation algorithm that is
    exactly the model.
    """
    sequences = [p + t for p, t in zip(prompts, out.tokens)]
    device = model.output_weight.device
    ids, positions, documents = (t.to(device) for t in left_pad(sequences, 0))
    full = gather_logits(model(**sequence_inputs(model, ids, positions, documents, eos_id)).logits,
                         model.config.vocab_size).float().cpu()
    worst = 0.0
    for row, (prompt, tokens) in enumerate(zip(prompts, out.tokens)):
        first = ids.shape[1] - len(sequences[row]) + len(prompt) - 1  # slot predicting the first new token
        for i in range(len(tokens)):
            worst = max(worst, (out.step_logits[i][row] - full[row, first + i]).abs().max().item())
    return worst
