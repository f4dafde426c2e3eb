"""Model hyper-parameters (`ModelConfig`) and the named presets.

A config describes the *unsharded* model; the tensor-parallel size only enters through
`validate(tp_size)` and `padded_vocab_size(tp_size)`. Configs round-trip through plain
dicts (`to_dict` / `from_dict`), which is what `config.json` next to saved weights holds.

`ModelConfig` holds the fields every architecture has. An architecture with fields of its
own registers a dataclass subclass with them (``register_architecture(..., config=MyConfig)``
in `megacompress.models.registry`); ``ModelConfig(architecture="x", ...)`` and
``ModelConfig.from_dict`` then build that subclass, so one flat dict (a YAML ``model:``
section, a ``config.json``) describes any model. Files written before the per-architecture
split carry every architecture's fields; `from_dict` drops another architecture's field
when it holds that field's default (what those files wrote), and refuses it otherwise.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from megacompress import plugins
from megacompress.errors import UserError

# Megatron's `make-vocab-size-divisible-by`: the embedding is padded so that every TP
# shard has a multiple of this many rows (fast matmul shapes, equal shards).
VOCAB_MULTIPLE = 128

# GPT-2 BPE (50257) + the two specials the built-in methods add (docs/architecture.md,
# "Tokenizers"); the presets keep this size so that every tokenizer kind fits.
GPT2_VOCAB_WITH_SPECIALS = 50259


class ConfigError(UserError, ValueError):
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
    # Biases on the q/k/v projections (Qwen2); the output projection and the MLP have none.
    qkv_bias: bool = False
    # None: plain RoPE. Llama-3.1's frequency scaling: {"rope_type": "llama3", "factor",
    # "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    # (`megacompress.models.rotary.rope_inv_freq`). Files without these two keys load as before.
    rope_scaling: dict[str, Any] | None = None
    # megacompress.models.registry name: which model class this config builds. Fields only
    # one architecture has live in its registered subclass, checked by its `validate_config`.
    architecture: str = "gpt"

    def __new__(cls, *args: Any, **kwargs: Any) -> "ModelConfig":
        # ModelConfig(architecture="x", ...) builds x's registered config class.
        if cls is ModelConfig and "architecture" in kwargs:
            from megacompress.models import registry  # the registry imports this module

            cls = registry.config_class(kwargs["architecture"])
        return super().__new__(cls)

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
        if not isinstance(self.qkv_bias, bool):
            problems.append(f"qkv_bias must be true or false, got {self.qkv_bias!r}")
        problems += rope_scaling_problems(self.rope_scaling)
        problems += self._architecture_problems()
        if problems:
            raise ConfigError("invalid ModelConfig: " + "; ".join(problems))

    def _architecture_problems(self) -> list[str]:
        from megacompress.models import registry  # the registry imports this module

        if self.architecture not in registry.architecture_names():
            return [f"architecture {self.architecture!r} is not registered "
                    f"(known: {', '.join(registry.architecture_names())})"]
        arch = registry.get_architecture(self.architecture)
        if not isinstance(self, arch.config):
            return [f"architecture {self.architecture!r} needs a {arch.config.__name__}, "
                    f"got a {type(self).__name__}"]
        return arch.validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build the config class of ``data["architecture"]`` from a dict; unknown keys are an
        error (with a did-you-mean hint). Another architecture's field at its default is
        dropped (files written before the per-architecture split; module docstring)."""
        from megacompress.models import registry

        cls = registry.config_class(data.get("architecture", "gpt"))
        known = [f.name for f in dataclasses.fields(cls)]
        legacy = registry.other_architectures_defaults(cls)
        data = {k: v for k, v in data.items() if k in known or k not in legacy or legacy[k] != v}
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
        """A named preset (see `PRESETS`, `register_preset`), optionally with some fields overridden."""
        preset = plugins.lookup(PRESETS, name)  # a method's presets too
        if preset is None:
            raise ConfigError(f"unknown model preset {name!r}; available: {', '.join(sorted(PRESETS))}")
        return cls.from_dict({**preset, **overrides})


ROPE_SCALING_TYPES = {  # rope_type -> its keys besides rope_type
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def rope_scaling_problems(scaling: Any) -> list[str]:
    """What is wrong with a ``rope_scaling`` value (empty: None or a valid llama3 dict)."""
    if scaling is None:
        return []
    if not isinstance(scaling, dict):
        return [f"rope_scaling must be null or a dict, got {scaling!r}"]
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING_TYPES:
        return [f"rope_scaling rope_type {kind!r} is not supported (supported: "
                f"{', '.join(map(repr, ROPE_SCALING_TYPES))})"]
    keys = ROPE_SCALING_TYPES[kind]
    wrong = sorted(set(scaling) - set(keys) - {"rope_type"})
    missing = [k for k in keys if k not in scaling]
    if wrong or missing:
        return [f"rope_scaling {kind!r} needs exactly the keys rope_type, {', '.join(keys)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(wrong)}" if wrong else "")]
    bad = [k for k in keys if isinstance(scaling[k], bool) or not isinstance(scaling[k], (int, float))
           or not scaling[k] > 0]
    if bad:
        return [f"rope_scaling {', '.join(bad)} must be positive numbers"]
    if not isinstance(scaling["original_max_position_embeddings"], int):
        return ["rope_scaling original_max_position_embeddings must be an int"]
    if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        return ["rope_scaling high_freq_factor must be > low_freq_factor"]
    return []


def register_preset(name: str, fields: dict[str, Any]) -> None:
    """Add a named preset (a method registers its model sizes in its package)."""
    if name in PRESETS and PRESETS[name] != fields:
        raise ValueError(f"model preset {name!r} is already registered with other fields")
    PRESETS[name] = dict(fields)


# The baseline sizes of docs/models.md: hidden 768, FFN 3072, 12 heads; 12 or 24 layers; sequence 512.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=64, num_layers=2, num_heads=4,
                 ffn_hidden_size=176, max_seq_len=128),
    "baseline-12": dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=768, num_layers=12,
                        num_heads=12, ffn_hidden_size=3072, max_seq_len=512),
    "baseline-24": dict(vocab_size=GPT2_VOCAB_WITH_SPECIALS, hidden_size=768, num_layers=24,
                        num_heads=12, ffn_hidden_size=3072, max_seq_len=512),
}
