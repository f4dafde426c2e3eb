"""GPTHF-E-B, the Generative Pretrained Thoughtformer (docs/gpthf.md): a GPT whose token
interactions are changed only by attention masks.

    tokens -> embedding -> E encoder layers (mask: causal inside each sentence)
           -> B body layers (mask: a position sees itself and every earlier EOS)
           -> RMSNorm -> tied LM head

The encoder's output at a sentence's EOS token is that sentence's embedding; the body
runs over all token positions, but the only earlier positions it reads are EOS ones, so
during generation the body needs one cached entry per finished sentence and the encoder
only the current sentence (`megacompress.methods.gpthf.generation`). RoPE uses the global token
positions in both stacks. Everything else (embedding, norms, tied head, TP, DP, save /
load) is the baseline `GPT`'s: only the layers and the masks differ, so a GPTHF-E-B has
exactly the parameters of a GPT of E + B layers (``num_layers = encoder_layers + body_layers``).

Inputs as the GPT's plus ``eos_mask [B, S]`` (True at sentence-end tokens, from the
document dataset's sentence sidecar; required).
"""

from __future__ import annotations

import torch

from dataclasses import dataclass

from megacompress.attention import dispatch
from megacompress.methods.gpthf import masks  # noqa: F401  (registers the gpthf_* mask kinds)
from megacompress.models.blocks import TransformerStack
from megacompress.models.config import GPT2_VOCAB_WITH_SPECIALS, ModelConfig, register_preset
from megacompress.models.gpt import GPT
from megacompress.models.kv_cache import KVCache
from megacompress.models.outputs import ModelOutput, language_model_loss, select_positions
from megacompress.models.registry import register_architecture

ENCODER, BODY = "encoder", "body"
# Mask of each stack over a full sequence; with a KV cache both are document-causal over
# the cache slots, because the cache itself holds only what the pattern lets a token see
# (the encoder cache: the current sentence; the body cache: the finished sentences' EOS).
MASK_KINDS = {ENCODER: "gpthf_encoder", BODY: "gpthf_body"}


@dataclass
class GPTHFConfig(ModelConfig):
    """`ModelConfig` + the split of ``num_layers`` into word-level encoder layers and
    sentence-level body layers (``encoder_layers + body_layers == num_layers``)."""

    encoder_layers: int = 0
    body_layers: int = 0


@register_architecture("gpthf", inputs=("input_ids", "position_ids", "document_ids", "labels", "eos_mask"),
                       required=("input_ids", "eos_mask"),
                       mask_kinds=("gpthf_encoder", "gpthf_body", "document_causal"), config=GPTHFConfig)
class GPTHF(GPT):
    """Word-level encoder stack + sentence-level body stack over the GPT's embedding and head."""

    @staticmethod
    def validate_config(config: GPTHFConfig) -> list[str]:
        problems = [f"{name} must be >= 1 for architecture 'gpthf', got {getattr(config, name)}"
                    for name in ("encoder_layers", "body_layers") if getattr(config, name) < 1]
        if not problems and config.encoder_layers + config.body_layers != config.num_layers:
            problems.append(f"encoder_layers {config.encoder_layers} + body_layers {config.body_layers} "
                            f"must equal num_layers {config.num_layers}")
        return problems

    def build_layers(self, config: GPTHFConfig, seed: int) -> None:
        self.encoder = TransformerStack(config, config.encoder_layers, seed, "encoder.layers")
        self.body = TransformerStack(config, config.body_layers, seed, "body.layers")

    def run_stack(self, part: str, x: torch.Tensor, position_ids: torch.Tensor, document_ids: torch.Tensor,
                  eos_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                  kv_commit: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """Hidden states x [B, Q, H] through the encoder or body stack at ``position_ids`` [B, Q].

        Without a cache the stack's GPTHF mask is built from ``document_ids`` / ``eos_mask``
        [B, Q]; with one, the Q new tokens attend to their row's cached slots (document-causal
        over the slots) and only the ``kv_commit`` rows keep them (`KVCache.begin_step`).
        """
        b, q, _ = x.shape
        if kv_cache is None:
            mask = self.prepare_mask(b, q, x.device, x.dtype, document_ids, kind=MASK_KINDS[part], eos_mask=eos_mask)
        else:
            slot_documents, q_offset = kv_cache.begin_step(document_ids, commit=kv_commit)
            mask = self.prepare_mask(b, q, x.device, x.dtype, slot_documents, q_offset)
        x = getattr(self, part)(x, self.rotary(position_ids, x.dtype), mask, kv_cache)
        if kv_cache is not None:
            kv_cache.end_step()
        return x

    def prepare_mask(self, batch: int, seq_len: int, device: torch.device, dtype: torch.dtype,
                     document_ids: torch.Tensor | None = None, q_offset: int | torch.Tensor | None = None, *,
                     kind: str | None = None, eos_mask: torch.Tensor | None = None):
        """``kind`` (a GPTHF mask over a full sequence) or, without it, the GPT's document-causal mask."""
        if kind is None:
            return super().prepare_mask(batch, seq_len, device, dtype, document_ids, q_offset)
        mask = dispatch.AttentionMask.build(kind, document_ids=document_ids, eos_mask=eos_mask)
        return dispatch.prepare(mask, backend=self.config.attention_backend, device=device, dtype=dtype)

    def lm_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm + tied head: [B, Q, H] -> vocab-sharded logits [B, Q, Vp/tp]."""
        return self.logits(self.norm(x))

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                eos_mask: torch.Tensor | None = None, logits_index: torch.Tensor | None = None) -> ModelOutput:
        """Teacher-forced forward over whole sequences (training, evaluation, slow generation);
        ``logits_index`` as `GPT.forward`'s."""
        b, s = input_ids.shape
        if s > self.config.max_seq_len:
            raise ValueError(f"sequence of {s} tokens exceeds max_seq_len {self.config.max_seq_len}")
        if eos_mask is None:
            raise ValueError("GPTHF needs eos_mask [B, S] (sentence ends; data.kind=document on shards "
                             "preprocessed with --split-sentences)")
        if position_ids is None:
            position_ids = torch.arange(s, device=input_ids.device).expand(b, s)
        if document_ids is None:
            document_ids = torch.zeros_like(input_ids)
        x = self.run_stack(ENCODER, self.embed(input_ids), position_ids, document_ids, eos_mask)
        logits = self.lm_logits(select_positions(self.run_stack(BODY, x, position_ids, document_ids, eos_mask),
                                                 logits_index))
        if labels is None:
            return ModelOutput(logits)
        return ModelOutput(logits, *language_model_loss(logits, labels, self.config.vocab_size))

    def new_stack_cache(self, part: str, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for the encoder or the body stack."""
        return self.new_kv_cache(batch_size, max_len, num_layers=len(getattr(self, part).layers))


# GPTHF-E-B: E encoder + B body layers, compared with the baseline of E + B layers (docs/gpthf.md).
_BASE = dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=768, num_heads=12, ffn_hidden_size=3072,
             max_seq_len=512, architecture="gpthf")
register_preset("tiny-gpthf", dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=64, num_layers=3, num_heads=4,
                                   ffn_hidden_size=176, max_seq_len=128, architecture="gpthf", encoder_layers=2,
                                   body_layers=1))
register_preset("gpthf-8-4", dict(_BASE, num_layers=12, encoder_layers=8, body_layers=4))
register_preset("gpthf-16-8", dict(_BASE, num_layers=24, encoder_layers=16, body_layers=8))
