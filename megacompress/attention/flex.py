"""FlexAttention backend: every mask pattern, GPU training path, CPU forward only.

``prepare`` builds the ``BlockMask`` once per batch (``create_block_mask`` over the
mask function; reused by every layer). The ``flex_attention`` kernel is compiled
lazily once per process. Compilation is on by default on CUDA and off on CPU
(eager is enough to check forward results there); the environment variable
``MEGACOMPRESS_FLEX_COMPILE=0|1`` overrides the default.

torch 2.13 has no FlexAttention backward on CPU: a CPU backward through this
backend raises ``NotImplementedError`` naming the fix (``backend="sdpa"``, which
``auto`` always picks on CPU).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from megacompress.attention.masks import with_q_offset

if TYPE_CHECKING:
    from megacompress.attention.dispatch import AttentionMask

_COMPILED: Callable[..., Tensor] | None = None


def _use_compile(device: torch.device) -> bool:
    env = os.environ.get("MEGACOMPRESS_FLEX_COMPILE")
    if env is None:
        return device.type == "cuda"
    if env not in ("0", "1"):
        raise ValueError(f"MEGACOMPRESS_FLEX_COMPILE must be 0 or 1, got {env!r}")
    return env == "1"


def compiled_kernel() -> Callable[..., Tensor]:
    """``torch.compile(flex_attention)``, created once per process on first use."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


class _NoCPUBackward(torch.autograd.Function):
    """Identity on the forward output whose backward explains that CPU Flex cannot train."""

    @staticmethod
    def forward(ctx, out: Tensor, *inputs: Tensor) -> Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx, *grads: Tensor):
        raise NotImplementedError(
            "attention backend 'flex' has no backward on CPU (torch FlexAttention limitation); "
            "train on CPU with backend='sdpa' (backend='auto' chooses it)"
        )


@dataclass(frozen=True)
class FlexPrepared:
    mask: "AttentionMask"
    block_mask: BlockMask
    compiled: bool
    backend: str = "flex"

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.device.type == "cpu" and (q.requires_grad or k.requires_grad or v.requires_grad):
            # torch refuses CPU inputs that require grad even under no_grad. Forward still
            # works here (e.g. evaluation); only a backward is refused, with a clear error.
            with torch.no_grad():
                out = self._forward(q.detach(), k.detach(), v.detach())
            return _NoCPUBackward.apply(out, q, k, v) if torch.is_grad_enabled() else out
        return self._forward(q, k, v)

    def _forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        gqa = q.shape[1] != k.shape[1]
        if self.compiled:
            return compiled_kernel()(q, k, v, block_mask=self.block_mask, enable_gqa=gqa)
        with warnings.catch_warnings():
            # Eager (unfused) Flex is deliberate here (CPU checks); torch warns about it once per process.
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, block_mask=self.block_mask, enable_gqa=gqa)


def prepare(mask: "AttentionMask", device: torch.device) -> FlexPrepared:
    # A mask that does not depend on the sample (plain causal) is built once for all rows.
    batch = None if mask.kind == "causal" else mask.batch
    block_mask = create_block_mask(
        with_q_offset(mask.mask_fn, mask.q_offset), batch, None, mask.q_len, mask.kv_len, device=device
    )
    return FlexPrepared(mask, block_mask, _use_compile(device))
