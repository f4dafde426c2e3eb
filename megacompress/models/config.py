"""Model hyper-parameters (`ModelConfig`) and the named presets.

A config describes the *unsharded* model; the tensor-parallel size only enters through
`validate(tp_size)` and `padded_vocab_size(tp_size)`. Configs round-trip through plain
dicts (`to_dict` / `from_dict`), which is what `config.json` next to saved weights holds.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

# Megatron's `make-vocab-size-divisible-by`: the embedding is padded so that every TP
# shard has a multiple of this many rows (fast matmul shapes, equal shards).
VOCAB_MULTIPLE = 128

# GPT-2 BPE (50257) + <|endofsentence|> + <GIST> (docs/architecture.md, "Tokenizers").
GPT2_VOCAB_WITH_SPECIALS = 50259


class ConfigError(ValueError):
    """An invalid model configuration; the message names the offending field(s)."""


@dataclass
class ModelConfig:
    """Llama-style decoder: RMSNorm pre-norm, SwiGLU MLP, RoPE, no biases, no dropout.

    ``vocab_size`` is the real tokenizer vocabulary; the embedding matrix has
    ``padded_vocab_size(tp)`` rows and logits of the padding rows are masked out, so the
    model computes the same function for every TP size.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_hidden_size: int
    max_seq_len: int
    num_kv_heads: int | None = None  # None: = num_heads (multi-head attention); fewer: GQA
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = True
    attention_backend: str = "auto"  # passed to megacompress.attention.dispatch.prepare
    # megacompress.models.registry name: which model class this config builds. Fields only
    # one architecture uses are checked by that class's `validate_config`.
    architecture: str = "gpt"
    # GPTHF (megacompress.models.gpthf): word-level encoder layers + sentence-level body
    # layers (their sum is num_layers). 0 for every other architecture.
    encoder_layers: int = 0
    body_layers: int = 0
    # Gist tokens (megacompress.models.gist): <GIST> tokens per prompt (k) and the mask
    # variant (gist | pos_control | neg_control). Unused by every other architecture.
    gist_tokens: int = 0
    gist_variant: str = "gist"

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def padded_vocab_size(self, tp_size: int = 1) -> int:
        """Rows of the embedding: `vocab_size` rounded up to a multiple of 128 * tp_size."""
        multiple = VOCAB_MULTIPLE * tp_size
        return -(-self.vocab_size // multiple) * multiple

    def validate(self, tp_size: int = 1) -> None:
        """Raise `ConfigError` listing every violated constraint (for this TP size)."""
        problems = []
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "ffn_hidden_size", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if problems:
            raise ConfigError("invalid ModelConfig: " + "; ".join(problems))
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        elif self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if tp_size < 1:
            problems.append(f"tensor-parallel size must be >= 1, got {tp_size}")
        else:
            for name in ("num_heads", "num_kv_heads", "ffn_hidden_size"):
                if getattr(self, name) % tp_size:
                    problems.append(f"{name} {getattr(self, name)} is not divisible by the "
                                    f"tensor-parallel size {tp_size}")
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            problems.append("rope_theta, norm_eps and init_std must be > 0")
        problems += self._architecture_problems()
        if problems:
            raise ConfigError("invalid ModelConfig: " + "; ".join(problems))

    def _architecture_problems(self) -> list[str]:
        from megacompress.models import registry  # the registry imports this module

        if self.architecture not in registry.architecture_names():
            return [f"architecture {self.architecture!r} is not registered "
                    f"(known: {', '.join(registry.architecture_names())})"]
        return registry.get_architecture(self.architecture).validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict; unknown keys are an error (with a did-you-mean hint)."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"unknown ModelConfig key(s): {', '.join(hints)}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in data]
        if missing:
            raise ConfigError(f"ModelConfig is missing required key(s): {', '.join(missing)}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A named preset (see `PRESETS`), optionally with some fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; available: {', '.join(sorted(PRESETS))}")
        return cls.from_dict({**PRESETS[name], **overrides})


# The paper sizes (SPEC §1): hidden 768, FFN 3072, 12 heads; 12 or 24 layers; sequence 512.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=64, num_layers=2, num_heads=4,
                 ffn_hidden_size=176, max_seq_len=128),
    "baseline-12": dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=768, num_layers=12,
                        num_heads=12, ffn_hidden_size=3072, max_seq_len=512),
    "baseline-24": dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=768, num_layers=24,
                        num_heads=12, ffn_hidden_size=3072, max_seq_len=512),
    # GPTHF-E-B: E encoder + B body layers, compared with the baseline of E + B layers.
    "tiny-gpthf": dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=64, num_layers=3, num_heads=4,
                       ffn_hidden_size=176, max_seq_len=128, architecture="gpthf", encoder_layers=2, body_layers=1),
    "gpthf-8-4": dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=768, num_layers=12, num_heads=12,
                      ffn_hidden_size=3072, max_seq_len=512, architecture="gpthf", encoder_layers=8, body_layers=4),
    "gpthf-16-8": dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=768, num_layers=24, num_heads=12,
                       ffn_hidden_size=3072, max_seq_len=512, architecture="gpthf", encoder_layers=16,
                       body_layers=8),
}
