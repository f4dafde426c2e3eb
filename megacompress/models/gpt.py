"""Baseline GPT: token embedding -> L pre-norm blocks -> RMSNorm -> tied LM head.

Shapes: ``input_ids``, ``position_ids``, ``document_ids``, ``labels`` are [B, S] int64
(docs/architecture.md, "Samples and batches"). Logits come back *vocab-sharded*:
[B, S, Vp/tp], this TP rank's block of the padded vocabulary (Vp = `padded_vocab_size`);
`gather_logits` returns the full, unpadded [B, S, V]. The loss is the mean per-token
cross-entropy over ``labels != -100``, computed without gathering logits; padding
columns (ids >= vocab_size) are excluded from the softmax, so logits/loss/gradients
are the same for every TP size.

Attention mask: document-causal when ``document_ids`` is given (packed documents,
-1 = padding), plain causal otherwise; with a ``kv_cache`` the new tokens attend to
the cached slots through the same mask at ``q_offset = kv_cache.length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from megacompress.attention import dispatch
from megacompress.generation.kv_cache import KVCache
from megacompress.models import pretrained
from megacompress.models.blocks import RMSNorm, TransformerStack
from megacompress.models.config import VOCAB_MULTIPLE, ModelConfig
from megacompress.models.rotary import RotaryEmbedding
from megacompress.parallel import mappings, state
from megacompress.parallel.cross_entropy import vocab_parallel_cross_entropy
from megacompress.parallel.layers import VocabParallelEmbedding, parallel_lm_logits


@dataclass
class ModelOutput:
    logits: torch.Tensor               # [B, S, Vp/tp] this rank's vocabulary block
    loss: torch.Tensor | None = None   # scalar fp32, when labels were given


def language_model_loss(logits_parallel: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Mean cross-entropy over ``labels != -100`` (0 when a batch has no label at all)."""
    per_token = vocab_parallel_cross_entropy(logits_parallel, labels, vocab_size=vocab_size)
    return per_token.sum() / (labels != -100).sum().clamp(min=1)


def gather_logits(logits_parallel: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[..., Vp/tp] shards -> full [..., vocab_size] on every TP rank (padding columns dropped)."""
    return mappings.gather_from_tp_region(logits_parallel)[..., :vocab_size]


def _ensure_parallel_state() -> None:
    # A single-process user (notebook, CLI) need not set up process groups by hand.
    if not state.is_initialized():
        state.initialize()


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
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.stack = TransformerStack(config, config.num_layers, seed, "stack.layers")
        self.norm = RMSNorm(h, config.norm_eps)
        # An untied head is a second vocab-sharded [Vp/tp, H] table (same padding and
        # sharding as the embedding), used through `parallel_lm_logits` like a tied one.
        self.lm_head = None if config.tie_embeddings else VocabParallelEmbedding(
            config.vocab_size, h, init_std=config.init_std, init_seed=seed, seed_offset="lm_head",
            vocab_multiple=VOCAB_MULTIPLE)

    @property
    def output_weight(self) -> torch.Tensor:
        return (self.embed if self.lm_head is None else self.lm_head).weight

    def prepare_mask(self, batch: int, seq_len: int, device: torch.device, dtype: torch.dtype,
                     document_ids: torch.Tensor | None = None,
                     kv_cache: KVCache | None = None) -> dispatch.PreparedMask:
        """The (document-)causal mask of one forward call, prepared once for all layers.

        With ``kv_cache``, ``document_ids`` are those of all slots 0..length+S-1 (as
        returned by `KVCache.begin_step`) and queries sit at ``q_offset = kv_cache.length``.
        """
        if kv_cache is not None:
            mask = dispatch.AttentionMask.build("document_causal", document_ids=document_ids,
                                                q_len=seq_len, q_offset=kv_cache.length)
        elif document_ids is not None:
            mask = dispatch.AttentionMask.build("document_causal", document_ids=document_ids)
        else:
            mask = dispatch.AttentionMask.build("causal", batch=batch, kv_len=seq_len)
        return dispatch.prepare(mask, backend=self.config.attention_backend, device=device, dtype=dtype)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> ModelOutput:
        b, s = input_ids.shape
        if s > self.config.max_seq_len:
            raise ValueError(f"sequence of {s} tokens exceeds max_seq_len {self.config.max_seq_len}")
        offset = 0 if kv_cache is None else kv_cache.length
        if position_ids is None:
            position_ids = torch.arange(offset, offset + s, device=input_ids.device).expand(b, s)
        x = self.embed(input_ids)
        if kv_cache is not None:
            if document_ids is None:
                document_ids = torch.zeros_like(input_ids)
            document_ids = kv_cache.begin_step(document_ids)
        mask = self.prepare_mask(b, s, input_ids.device, x.dtype, document_ids, kv_cache)
        x = self.stack(x, self.rotary(position_ids, x.dtype), mask, kv_cache)
        if kv_cache is not None:
            kv_cache.end_step()
        logits = parallel_lm_logits(self.norm(x), self.output_weight)
        loss = None if labels is None else language_model_loss(logits, labels, self.config.vocab_size)
        return ModelOutput(logits, loss)

    def new_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty cache for this model on this TP rank (dtype/device of the weights)."""
        weight = self.output_weight
        tp = state.get_tensor_parallel_world_size()
        return KVCache(self.config.num_layers, batch_size, self.config.num_kv_heads // tp,
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
        _ensure_parallel_state()
        saved = pretrained.load_config(directory, expected=config)
        model = cls(saved)
        pretrained.load_weights(model, directory)
        return model
