"""Baseline GPT: token embedding -> L pre-norm blocks -> RMSNorm -> tied LM head.

Shapes: ``input_ids``, ``position_ids``, ``document_ids``, ``labels`` are [B, S] int64
(docs/architecture.md, "Samples and batches"). Logits come back *vocab-sharded*:
[B, S, Vp/tp], this TP rank's block of the padded vocabulary (Vp = `padded_vocab_size`);
`gather_logits` returns the full, unpadded [B, S, V]. The loss comes back as the sum of
per-token cross-entropies over ``labels != -100`` and their count (`ModelOutput`),
computed without gathering logits; padding columns (ids >= vocab_size) are excluded
from the softmax, so logits/loss/gradients are the same for every TP size.

Attention mask: document-causal when ``document_ids`` is given (packed documents,
-1 = padding), plain causal otherwise; with a ``kv_cache`` the new tokens attend to
their row's cached slots through the same mask, at each row's own offset.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from megacompress.attention import dispatch
from megacompress.models import pretrained
from megacompress.models.blocks import RMSNorm, TransformerStack
from megacompress.models.config import VOCAB_MULTIPLE, ModelConfig
from megacompress.models.kv_cache import KVCache
from megacompress.models.outputs import ModelOutput, language_model_loss, select_positions
from megacompress.models.registry import load_pretrained, register_architecture
from megacompress.models.rotary import RotaryEmbedding
from megacompress.parallel import state
from megacompress.parallel.layers import VocabParallelEmbedding, parallel_lm_logits


class OutputHead(VocabParallelEmbedding):
    """An untied LM head: the embedding's table layout (vocab-sharded, padded, same init), but its
    call computes logits. The logits are computed inside this module's own call so that ZeRO-3,
    which gathers a partitioned weight around the call of the module that owns it, gathers it
    (read as a bare attribute from elsewhere it would be the empty partition placeholder)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return parallel_lm_logits(hidden, self.weight)


def _ensure_parallel_state() -> None:
    # A single-process user (notebook, CLI) need not set up process groups by hand.
    if not state.is_initialized():
        state.initialize()


@register_architecture("gpt", inputs=("input_ids", "position_ids", "document_ids", "labels"),
                       mask_kinds=("causal", "document_causal"), llama_compatible=True)
class GPT(nn.Module):
    """Decoder-only LM. Initialisation depends only on (config, seed), not on the TP size."""

    def __init__(self, config: ModelConfig, seed: int = 0):
        super().__init__()
        _ensure_parallel_state()
        config.validate(state.get_tensor_parallel_world_size())
        self.config = config
        h = config.hidden_size
        self.embed = VocabParallelEmbedding(config.vocab_size, h, init_std=config.init_std, init_seed=seed,
                                            seed_offset="embed", vocab_multiple=VOCAB_MULTIPLE)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        self.build_layers(config, seed)
        self.norm = RMSNorm(h, config.norm_eps)
        # An untied head is a second vocab-sharded [Vp/tp, H] table (same padding and
        # sharding as the embedding), whose call computes the logits (`OutputHead`).
        self.lm_head = None if config.tie_embeddings else OutputHead(
            config.vocab_size, h, init_std=config.init_std, init_seed=seed, seed_offset="lm_head",
            vocab_multiple=VOCAB_MULTIPLE)

    def build_layers(self, config: ModelConfig, seed: int) -> None:
        """The transformer layers between embedding and final norm (a model with several stacks overrides this)."""
        self.stack = TransformerStack(config, config.num_layers, seed, "stack.layers")

    @property
    def output_weight(self) -> torch.Tensor:
        return (self.embed if self.lm_head is None else self.lm_head).weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocab-sharded logits [.., Vp/tp] of final-norm outputs, through the head module when untied
        (`OutputHead`: what ZeRO-3 needs); the tied table is the embedding's, gathered for its lookup."""
        return parallel_lm_logits(hidden, self.embed.weight) if self.lm_head is None else self.lm_head(hidden)

    def prepare_mask(self, batch: int, seq_len: int, device: torch.device, dtype: torch.dtype,
                     document_ids: torch.Tensor | None = None,
                     q_offset: int | torch.Tensor | None = None) -> dispatch.PreparedMask:
        """The (document-)causal mask of one forward call, prepared once for all layers.

        With a KV cache, ``document_ids`` are those of its slots and ``q_offset`` where each
        row's queries sit, both as returned by `KVCache.begin_step`.
        """
        if q_offset is not None:
            mask = dispatch.AttentionMask.build("document_causal", document_ids=document_ids,
                                                q_len=seq_len, q_offset=q_offset)
        elif document_ids is not None:
            mask = dispatch.AttentionMask.build("document_causal", document_ids=document_ids)
        else:
            mask = dispatch.AttentionMask.build("causal", batch=batch, kv_len=seq_len)
        return dispatch.prepare(mask, backend=self.config.attention_backend, device=device, dtype=dtype)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, kv_commit: torch.Tensor | list[int] | None = None,
                logits_index: torch.Tensor | None = None) -> ModelOutput:
        """With ``kv_cache``: the new tokens attend to their row's cached entries and are
        appended to the rows in ``kv_commit`` (default all; see `KVCache.begin_step`);
        ``position_ids`` default to each row's cache length onward. ``logits_index`` [B]: run
        the LM head only at that slot of each row (logits [B, 1, Vp/tp]; a prefill needs no more),
        or [B, N]: at N slots of each row (logits [B, N, Vp/tp]; a packed prefill)."""
        return self.run(input_ids, position_ids, document_ids, labels, kv_cache, kv_commit, logits_index)

    def run(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
            document_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
            kv_cache: KVCache | None = None, kv_commit: torch.Tensor | list[int] | None = None,
            logits_index: torch.Tensor | None = None, **mask_metadata: torch.Tensor) -> ModelOutput:
        """`forward`, with ``mask_metadata`` passed on to `prepare_mask` (a subclass whose
        mask needs more than ``document_ids`` calls this from its own ``forward``)."""
        b, s = input_ids.shape
        if s > self.config.max_seq_len:
            raise ValueError(f"sequence of {s} tokens exceeds max_seq_len {self.config.max_seq_len}")
        if position_ids is None:
            offset = 0 if kv_cache is None else kv_cache.lengths[:, None]
            position_ids = (offset + torch.arange(s)).expand(b, s).to(input_ids.device)
        x = self.embed(input_ids)
        q_offset = None
        if kv_cache is not None:
            if document_ids is None:
                document_ids = torch.zeros_like(input_ids)
            document_ids, q_offset = kv_cache.begin_step(document_ids, commit=kv_commit)
        mask = self.prepare_mask(b, s, input_ids.device, x.dtype, document_ids, q_offset, **mask_metadata)
        x = self.stack(x, self.rotary(position_ids, x.dtype), mask, kv_cache)
        if kv_cache is not None:
            kv_cache.end_step()
        logits = self.logits(self.norm(select_positions(x, logits_index)))
        if labels is None:
            return ModelOutput(logits)
        return ModelOutput(logits, *language_model_loss(logits, labels, self.config.vocab_size))

    def new_kv_cache(self, batch_size: int, max_len: int, num_layers: int | None = None) -> KVCache:
        """An empty cache for this model on this TP rank (dtype/device of the weights);
        ``num_layers`` (default all) for a model with several stacks."""
        weight = self.output_weight
        tp = state.get_tensor_parallel_world_size()
        return KVCache(num_layers or self.config.num_layers, batch_size, self.config.num_kv_heads // tp,
                       self.config.head_dim, max_len, dtype=weight.dtype, device=weight.device)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write full (TP-gathered, unpadded) weights + config; collective over the TP group."""
        pretrained.save(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, config: ModelConfig | None = None) -> "GPT":
        """Load weights saved at any TP size and shard them for the current TP size.

        ``config``: if given, it must equal the saved config.json (else an error lists
        the differing keys).
        """
        return load_pretrained(directory, config=config, expected=cls)
