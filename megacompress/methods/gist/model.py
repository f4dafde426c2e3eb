"""Gist model (docs/gist.md): the baseline `GPT` whose attention mask hides the instruction
from every token after the ``<GIST>`` tokens (architecture ``"gist"``).

Only the mask differs from `GPT` (embedding, blocks, head, TP, DP, save / load, KV cache
are the GPT's). Batch inputs add ``gist_start``, ``gist_end`` (int64 [B]: index of a row's
first gist token and the index after its last, in the row's slot coordinates; or [B, S]:
each slot's own prompt's span, when a row packs several prompts). The mask
kind comes from ``config.gist_variant`` (`GistConfig`):

==============  ======================  =============================================
variant         mask kind               queries after the gists see
==============  ======================  =============================================
``gist``        ``gist``                the gists and everything after them
``pos_control`` ``gist_pos_control``    everything before them (plain causal)
``neg_control`` ``gist_neg_control``    only what follows the gists
==============  ======================  =============================================

Without ``gist_start`` the model is a plain document-causal LM: that is also how a row
started from cached gist K/V runs (`megacompress.methods.gist.cache`), because its
cache holds nothing but the gists and what follows them. ``config.gist_tokens`` (k) is
the number of gists the model was made with (`megacompress.methods.gist.init`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megacompress.attention import dispatch
from megacompress.methods.gist import masks  # noqa: F401  (registers the gist mask kinds)
from megacompress.models.config import ModelConfig
from megacompress.models.gpt import GPT
from megacompress.models.kv_cache import KVCache
from megacompress.models.outputs import ModelOutput
from megacompress.models.registry import register_architecture

MASK_KINDS = {"gist": "gist", "pos_control": "gist_pos_control", "neg_control": "gist_neg_control"}


@dataclass
class GistConfig(ModelConfig):
    """`ModelConfig` + the number of ``<GIST>`` tokens per prompt (k, >= 1) and the mask
    variant (``gist`` | ``pos_control`` | ``neg_control``)."""

    gist_tokens: int = 0
    gist_variant: str = "gist"


@register_architecture("gist", inputs=("input_ids", "position_ids", "document_ids", "labels", "gist_start", "gist_end"),
                       mask_kinds=("causal", "document_causal", *MASK_KINDS.values()), config=GistConfig,
                       llama_compatible=True)
class GistGPT(GPT):
    """GPT + gist masks; see the module docstring."""

    @staticmethod
    def validate_config(config: GistConfig) -> list[str]:
        problems = []
        if config.gist_variant not in MASK_KINDS:
            problems.append(f"gist_variant {config.gist_variant!r} must be one of {', '.join(MASK_KINDS)}")
        if config.gist_tokens < 1:
            problems.append(f"gist_tokens (k) must be >= 1 for architecture 'gist', got {config.gist_tokens}")
        return problems

    def prepare_mask(self, batch: int, seq_len: int, device: torch.device, dtype: torch.dtype,
                     document_ids: torch.Tensor | None = None, q_offset: int | torch.Tensor | None = None,
                     gist_start: torch.Tensor | None = None,
                     gist_end: torch.Tensor | None = None) -> dispatch.PreparedMask:
        if gist_start is None:
            return super().prepare_mask(batch, seq_len, device, dtype, document_ids, q_offset)
        gist_start, gist_end = gist_start.to(device), gist_end.to(device)
        if document_ids is None:
            document_ids = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
        mask = dispatch.AttentionMask.build(MASK_KINDS[self.config.gist_variant], document_ids=document_ids,
                                            gist_start=gist_start, gist_end=gist_end, q_len=seq_len,
                                            q_offset=0 if q_offset is None else q_offset)
        return dispatch.prepare(mask, backend=self.config.attention_backend, device=device, dtype=dtype)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                gist_start: torch.Tensor | None = None, gist_end: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, kv_commit: torch.Tensor | list[int] | None = None,
                logits_index: torch.Tensor | None = None) -> ModelOutput:
        """As `GPT.forward`; with ``gist_start``/``gist_end`` (slot coordinates, also under a
        KV cache) the variant's gist mask replaces the document-causal one."""
        if (gist_start is None) != (gist_end is None):
            raise ValueError("GistGPT.forward: give both gist_start and gist_end, or neither")
        span = {} if gist_start is None else {"gist_start": gist_start, "gist_end": gist_end}
        return self.run(input_ids, position_ids, document_ids, labels, kv_cache, kv_commit, logits_index, **span)
