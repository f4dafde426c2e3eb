"""Hugging Face Llama-family checkpoints <-> our `GPT` (``tools/convert_checkpoint.py import-hf / export-hf``).

A Llama decoder is exactly our baseline block (RMSNorm pre-norm, SwiGLU, rotate-half RoPE,
GQA, no biases), so conversion is renaming plus one layout change. Families read:

* ``LlamaForCausalLM`` (``model_type`` llama): Llama 1/2/3, SmolLM, TinyLlama ...; RoPE plain or
  Llama-3.1's ``rope_type: "llama3"`` scaling (`ModelConfig.rope_scaling`).
* ``MistralForCausalLM`` (mistral): a Llama with a sliding attention window W
  (``sliding_window``; null in later Mistrals). Our attention is full causal, which is exact
  while ``max_seq_len <= W``: the import defaults ``max_seq_len`` to
  ``min(max_position_embeddings, W)`` with a note on stderr, and refuses an explicit
  ``--max-seq-len`` above W.
* ``Qwen2ForCausalLM`` (qwen2): q/k/v projections with biases (``qkv_bias``; o_proj and the
  MLP have none), tied or untied embeddings; its sliding window (``use_sliding_window``) as
  for Mistral.

Anything else (other architectures, MoE, other RoPE scalings, partial rotary, o_proj / MLP
biases, other activations) is refused by name with one `ConversionError`.

==============================================  ==========================================
Hugging Face (``LlamaForCausalLM``)             ours (``model.safetensors``, unpadded)
==============================================  ==========================================
``model.embed_tokens.weight`` [V, H]            ``embed.weight``
``model.layers.i.input_layernorm.weight``       ``stack.layers.i.attn_norm.weight``
``model.layers.i.self_attn.{q,k,v}_proj``       ``stack.layers.i.attn.qkv.weight`` (fused, below)
``self_attn.{q,k,v}_proj.bias`` (Qwen2)         ``stack.layers.i.attn.qkv.bias`` (fused alike)
``model.layers.i.self_attn.o_proj.weight``      ``stack.layers.i.attn.out.weight``
``model.layers.i.post_attention_layernorm``     ``stack.layers.i.mlp_norm.weight``
``model.layers.i.mlp.{gate,up,down}_proj``      ``stack.layers.i.mlp.{gate,up,down}.weight``
``model.norm.weight``                           ``norm.weight``
``lm_head.weight`` (absent when tied)           ``lm_head.weight`` (``tie_embeddings=False``)
==============================================  ==========================================

Fused qkv rows are laid out per KV group (`megacompress.models.blocks.Attention`): for
group g, the r = Hq/Hkv query heads g*r..g*r+r-1, then key head g, then value head g,
each D rows. HF keeps q [Hq*D, H], k and v [Hkv*D, H] apart; both use rotate-half RoPE
on the head dimension, so no row permutation is needed (GGUF's is undone in `gguf_import`).

An imported model directory is a ``save_pretrained`` directory (any TP size loads it) plus
the tokenizer files ``tokenizer.json`` and ``tokenizer_config.json`` (the ``hf`` tokenizer
kind reads them); ``export-hf`` writes ``config.json`` + ``model.safetensors`` in HF's
layout with the same tokenizer files, loadable by ``AutoModelForCausalLM.from_pretrained``:
as ``Qwen2ForCausalLM`` with ``qkv_bias``, else as ``LlamaForCausalLM`` (an imported Mistral
too: within its ``max_seq_len`` the two compute the same function).

The import's ``max_seq_len`` defaults to the source's own context (``max_position_embeddings``,
2048 when absent; SmolLM2: 2048), clamped to a sliding window as above.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from megacompress.errors import UserError
from megacompress.atomic import atomic_write, write_text_atomic
from megacompress.data.tokenizers import TOKENIZER_CONFIG, TOKENIZER_JSON
from megacompress.models import pretrained
from megacompress.models.config import ConfigError, ModelConfig

TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG)
_LAYER_NAMES = {  # ours (after "stack.layers.i.") -> HF (after "model.layers.i."), one-to-one tensors
    "attn_norm.weight": "input_layernorm.weight",
    "attn.out.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}


class ConversionError(UserError, ValueError):
    """A checkpoint that cannot be converted; the message names the file and the problem."""


FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _sliding_window(hf: dict) -> int | None:
    """The attention window of a Mistral / Qwen2 config (None: full causal attention)."""
    kind, window = hf.get("model_type", "llama"), hf.get("sliding_window")
    if kind == "llama" or window is None:
        return None
    if kind == "qwen2":
        if not hf.get("use_sliding_window"):
            return None
        if hf.get("layer_types") is None and hf.get("max_window_layers", 0) >= hf.get("num_hidden_layers", 0):
            return None  # Qwen2 slides only in layers >= max_window_layers
    if hf.get("layer_types") is not None and "sliding_attention" not in hf["layer_types"]:
        return None
    return int(window)


def config_from_hf(hf: dict, source: str, max_seq_len: int | None = None) -> ModelConfig:
    """Our config for a HF Llama / Mistral / Qwen2 config dict; refuses what our block does not compute."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = hf.get("model_type", "llama")
    problems = []
    if kind not in FAMILIES:
        problems.append(f"model_type {kind!r} is not supported (supported: {', '.join(map(repr, FAMILIES))})")
    for arch in hf.get("architectures") or []:
        if arch != FAMILIES.get(kind):
            problems.append(f"architecture {arch!r} is not supported (supported: {', '.join(FAMILIES.values())})")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf['hidden_act']!r} (only silu / SwiGLU)")
    if hf.get("attention_bias"):
        problems.append("attention_bias (biases on all attention projections; only Qwen2's q/k/v biases)")
    if hf.get("mlp_bias"):
        problems.append("mlp_bias (MLP biases)")
    experts = [k for k in ("num_local_experts", "num_experts", "n_routed_experts") if hf.get(k)]
    if experts:
        problems.append(f"mixture of experts ({experts[0]} {hf[experts[0]]})")
    if any(isinstance(v, dict) for v in rope.values()):
        problems.append(f"per-layer-type RoPE parameters {sorted(rope)}")
        rope = {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        problems.append(f"RoPE scaling rope_type {rope_type!r} (only plain RoPE and 'llama3')")
    if float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        problems.append("partial_rotary_factor != 1 (RoPE on part of the head)")
    other_layers = sorted(set(hf.get("layer_types") or ()) - {"full_attention", "sliding_attention"})
    if other_layers:
        problems.append(f"layer_types {other_layers}")
    heads = hf.get("num_attention_heads") or 1  # a missing value is reported below
    if hf.get("head_dim") not in (None, hf.get("hidden_size", 0) // heads):
        problems.append(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    window = _sliding_window(hf)
    if window is not None and max_seq_len is not None and max_seq_len > window:
        problems.append(f"--max-seq-len {max_seq_len} > sliding_window {window} (our attention is full causal, "
                        f"exact only up to the window)")
    if problems:
        raise ConversionError(f"{source}: cannot import: " + "; ".join(problems))
    scaling = None
    if rope_type == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        scaling = {"rope_type": "llama3", **{k: rope.get(k) for k in keys}}
        if isinstance(scaling["original_max_position_embeddings"], float) \
                and scaling["original_max_position_embeddings"].is_integer():
            scaling["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
    if max_seq_len is None:
        max_seq_len = hf.get("max_position_embeddings", 2048)
        if window is not None and max_seq_len > window:
            print(f"note: {source}: sliding_window {window} < max_position_embeddings {max_seq_len}: max_seq_len "
                  f"set to {window} (our attention is full causal, exact only within the window)", file=sys.stderr)
            max_seq_len = window
    try:
        config = ModelConfig(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                             num_layers=hf["num_hidden_layers"], num_heads=heads,
                             num_kv_heads=hf.get("num_key_value_heads") or heads,
                             ffn_hidden_size=hf["intermediate_size"], max_seq_len=max_seq_len,
                             rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                             norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                             tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                             qkv_bias=kind == "qwen2", rope_scaling=scaling)
    except (KeyError, ConfigError) as exc:
        raise ConversionError(f"{source}: unusable {FAMILIES.get(kind, 'Llama')} config ({exc})") from None
    return config


def config_to_hf(config: ModelConfig, special_ids: dict[str, int | None]) -> dict:
    """The ``config.json`` of ``Qwen2ForCausalLM`` (``qkv_bias``) or ``LlamaForCausalLM`` (fp32 weights)."""
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        rope = {**config.rope_scaling, "rope_theta": config.rope_theta}
    hf = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "float32",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "hidden_act": "silu", "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps, "rope_parameters": rope,
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": special_ids.get("bos"), "eos_token_id": special_ids.get("eod"),
        "pad_token_id": special_ids.get("pad"),
    }
    if config.qkv_bias:
        del hf["attention_bias"], hf["mlp_bias"]
        hf.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False,
                  sliding_window=None, max_window_layers=config.num_layers)
    return hf


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    d, groups = config.head_dim, config.num_kv_heads
    r = config.num_heads // groups
    parts = (q.view(groups, r * d, -1), k.view(groups, d, -1), v.view(groups, d, -1))
    return torch.cat(parts, dim=1).reshape(-1, q.shape[1])


def _split_qkv(qkv: torch.Tensor, config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d, groups = config.head_dim, config.num_kv_heads
    r = config.num_heads // groups
    q, k, v = qkv.view(groups, (r + 2) * d, -1).split([r * d, d, d], dim=1)
    return (t.reshape(-1, qkv.shape[1]) for t in (q, k, v))


def _fuse_qkv_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    return _fuse_qkv(q[:, None], k[:, None], v[:, None], config)[:, 0]


def _split_qkv_bias(qkv: torch.Tensor, config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (t[:, 0] for t in _split_qkv(qkv[:, None], config))


def _hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every HF tensor of a Llama with ``config``."""
    h, f, v = config.hidden_size, config.ffn_hidden_size, config.vocab_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    layer = {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
             "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
             "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, q),
             "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f)}
    if config.qkv_bias:
        layer.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)})
    for i in range(config.num_layers):
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    return shapes


def from_hf_state(hf: dict[str, torch.Tensor], config: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """HF tensor names/layout -> ours (fp32); missing, unexpected or misshapen tensors are an error."""
    hf = dict(hf)
    if config.tie_embeddings:
        hf.pop("lm_head.weight", None)  # some tied checkpoints store the shared table twice
    wrong = [f"{name} {tuple(hf[name].shape)}, the config needs {shape}"
             for name, shape in _hf_shapes(config).items() if name in hf and tuple(hf[name].shape) != shape]
    if wrong:  # a config.json edited apart from its tensors (e.g. num_key_value_heads)
        raise ConversionError(f"{source}: tensors do not match the config: " + "; ".join(wrong[:4])
                              + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else ""))
    try:
        out = {"embed.weight": hf.pop("model.embed_tokens.weight"), "norm.weight": hf.pop("model.norm.weight")}
        if not config.tie_embeddings:
            out["lm_head.weight"] = hf.pop("lm_head.weight")
        for i in range(config.num_layers):
            ours, theirs = f"stack.layers.{i}.", f"model.layers.{i}."
            for name, hf_name in _LAYER_NAMES.items():
                out[ours + name] = hf.pop(theirs + hf_name)
            q, k, v = (hf.pop(f"{theirs}self_attn.{p}_proj.weight") for p in "qkv")
            out[ours + "attn.qkv.weight"] = _fuse_qkv(q, k, v, config)
            if config.qkv_bias:
                q, k, v = (hf.pop(f"{theirs}self_attn.{p}_proj.bias") for p in "qkv")
                out[ours + "attn.qkv.bias"] = _fuse_qkv_bias(q, k, v, config)
    except KeyError as exc:
        raise ConversionError(f"{source}: tensor {exc.args[0]} is missing") from None
    hf = {n: t for n, t in hf.items() if not n.endswith("rotary_emb.inv_freq")}  # derived buffers
    if hf:
        raise ConversionError(f"{source}: unexpected tensors {sorted(hf)[:8]}")
    return {n: t.float().contiguous() for n, t in out.items()}


def to_hf_state(ours: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of `from_hf_state`."""
    out = {"model.embed_tokens.weight": ours["embed.weight"], "model.norm.weight": ours["norm.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    for i in range(config.num_layers):
        prefix, hf_prefix = f"stack.layers.{i}.", f"model.layers.{i}."
        for name, hf_name in _LAYER_NAMES.items():
            out[hf_prefix + hf_name] = ours[prefix + name]
        for p, t in zip("qkv", _split_qkv(ours[prefix + "attn.qkv.weight"], config)):
            out[f"{hf_prefix}self_attn.{p}_proj.weight"] = t
        if config.qkv_bias:
            for p, t in zip("qkv", _split_qkv_bias(ours[prefix + "attn.qkv.bias"], config)):
                out[f"{hf_prefix}self_attn.{p}_proj.bias"] = t
    return {n: t.contiguous() for n, t in out.items()}


def write_model(tensors: dict[str, torch.Tensor], config: ModelConfig, out_dir: str | Path,
                tokenizer_files: dict[str, str]) -> Path:
    """Our model directory (``save_pretrained`` format + tokenizer files), checked by loading it."""
    from megacompress.models.registry import load_pretrained

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in tokenizer_files.items():
        write_text_atomic(out_dir / name, text)
    atomic_write(out_dir / pretrained.WEIGHTS_NAME,
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_text_atomic(out_dir / pretrained.CONFIG_NAME, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    pretrained.seal(out_dir)
    load_pretrained(out_dir)  # names and shapes against the model class (an error names the file)
    return out_dir


def _read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{directory}: no *.safetensors files (PyTorch .bin checkpoints are not read)")
    tensors = {}
    for file in files:
        try:
            tensors.update(load_file(file))
        except (SafetensorError, OSError) as exc:
            raise ConversionError(f"{file}: not a readable safetensors file ({exc})") from None
    return tensors


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None


def import_hf(hf_dir: str | Path, out_dir: str | Path, max_seq_len: int | None = None) -> Path:
    """HF Llama / Mistral / Qwen2 directory (``config.json`` + ``*.safetensors`` + ``tokenizer.json``) -> our
    model directory; ``max_seq_len`` defaults to the source's ``max_position_embeddings`` (module docstring)."""
    hf_dir = Path(hf_dir)
    config = config_from_hf(_read_json(hf_dir / "config.json"), str(hf_dir / "config.json"), max_seq_len)
    tensors = from_hf_state(_read_safetensors_dir(hf_dir), config, str(hf_dir))
    if not (hf_dir / TOKENIZER_JSON).is_file():
        raise ConversionError(f"{hf_dir / TOKENIZER_JSON}: not found (an imported model carries its tokenizer)")
    tokenizer = {name: (hf_dir / name).read_text() for name in TOKENIZER_FILES if (hf_dir / name).is_file()}
    return write_model(tensors, config, out_dir, tokenizer)


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Our model directory (any architecture built on the GPT blocks) -> HF Llama (Qwen2 with ``qkv_bias``)
    layout + tokenizer."""
    from megacompress.data.tokenizers import HFTokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = pretrained.load_config(model_dir)
    from megacompress.models.registry import get_architecture

    if not get_architecture(config.architecture).llama_compatible:
        raise ConversionError(f"{model_dir / pretrained.CONFIG_NAME}: architecture {config.architecture!r} "
                              "has no Llama equivalent (its masks are not causal)")
    if not (model_dir / TOKENIZER_JSON).is_file():
        raise ConversionError(f"{model_dir / TOKENIZER_JSON}: not found; export-hf needs the model's tokenizer")
    pretrained.verify(model_dir)
    weights = model_dir / pretrained.WEIGHTS_NAME
    try:
        tensors = to_hf_state(load_file(weights), config)
    except (SafetensorError, OSError) as exc:
        raise ConversionError(f"{weights}: not a readable safetensors file ({exc})") from None
    except KeyError as exc:
        raise ConversionError(f"{weights}: tensor {exc.args[0]} is missing") from None
    tokenizer = HFTokenizer(str(model_dir))
    roles = {role: tokenizer.special_ids.get(role) for role in ("bos", "eod", "pad")}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)
    atomic_write(out_dir / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_text_atomic(out_dir / "config.json", json.dumps(config_to_hf(config, roles), indent=2) + "\n")
    return out_dir
