"""llama.cpp GGUF files -> our model directory (``tools/convert_checkpoint.py import-gguf``).

Read with ``gguf.GGUFReader`` (memory-mapped); every tensor is dequantized to fp32 with
``gguf.quants.dequantize`` (F32/F16/BF16/Q8_0/Q4_0/Q4_1/K-quants ...). GGUF stores shapes
in ggml order (fastest dimension first), so a weight listed as ``[in, out]`` is the
``[out, in]`` matrix of PyTorch. Names map onto Hugging Face's Llama names, then
`hf_llama.from_hf_state` does the rest:

    token_embd -> model.embed_tokens      blk.i.attn_{q,k,v,output} -> self_attn.{q,k,v,o}_proj
    output_norm -> model.norm             blk.i.attn_norm / ffn_norm -> input / post_attention_layernorm
    output -> lm_head (absent: tied)      blk.i.ffn_{gate,up,down} -> mlp.{gate,up,down}_proj

llama.cpp's converter permutes the rows of attn_q and attn_k (per head, from rotate-half
to interleaved pairs, its RoPE layout): original rows ``[h, 2, D/2]`` (two halves per head)
are stored as ``[h, D/2, 2]``. `unpermute` swaps them back (attn_k uses the KV head count).

The tokenizer is rebuilt from the metadata with the ``tokenizers`` library: only
``tokenizer.ggml.model == "gpt2"`` (byte-level BPE: tokens + merges; the SmolLM / GPT-2 /
Llama-3 family) is supported. Control tokens (token_type 3) become special tokens,
user-defined ones (4) added tokens; ``tokenizer.ggml.pre`` picks the pre-tokenizer
(``smollm``: single digits, then GPT-2's byte-level split, as llama.cpp does). BOS/EOS/pad
ids and ``add_bos_token`` go to ``tokenizer_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from megacompress.data.tokenizers import TOKENIZER_CONFIG, TOKENIZER_JSON
from megacompress.models.hf_llama import ConversionError, config_from_hf, from_hf_state, write_model

_LAYER_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: file rows [heads, D/2, 2] -> [heads, 2, D/2]."""
    rows, cols = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def hf_name(name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    return name  # unknown tensors are reported by from_hf_state


class GGUFFile:
    """Metadata, fp32 tensors and tokenizer of one llama-architecture GGUF file."""

    def __init__(self, path: str | Path):
        from gguf import GGUFReader

        self.path = Path(path)
        try:
            self.reader = GGUFReader(self.path)
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{self.path}: not a readable GGUF file ({exc})") from None
        arch = self.get("general.architecture")
        if arch != "llama":
            raise ConversionError(f"{self.path}: general.architecture is {arch!r}; only 'llama' is supported")

    def get(self, key: str, default=None):
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def hf_config(self) -> dict:
        """The metadata as a Hugging Face ``LlamaConfig`` dict."""
        def need(key: str):
            value = self.get(f"llama.{key}")
            if value is None:
                raise ConversionError(f"{self.path}: metadata key llama.{key} is missing")
            return value

        return {"vocab_size": self.get("llama.vocab_size") or len(self.get("tokenizer.ggml.tokens", [])),
                "hidden_size": need("embedding_length"), "num_hidden_layers": need("block_count"),
                "num_attention_heads": need("attention.head_count"),
                "num_key_value_heads": self.get("llama.attention.head_count_kv"),
                "intermediate_size": need("feed_forward_length"), "max_position_embeddings": need("context_length"),
                "rope_theta": self.get("llama.rope.freq_base", 10000.0),
                "rms_norm_eps": need("attention.layer_norm_rms_epsilon"),
                "tie_word_embeddings": not any(t.name == "output.weight" for t in self.reader.tensors)}

    def hf_tensors(self, heads: int, kv_heads: int) -> dict[str, torch.Tensor]:
        """All tensors, dequantized to fp32, under Hugging Face names, q/k rows un-permuted."""
        from gguf.quants import dequantize

        out = {}
        for tensor in self.reader.tensors:
            try:
                array = dequantize(tensor.data, tensor.tensor_type)
            except NotImplementedError as exc:
                raise ConversionError(f"{self.path}: tensor {tensor.name}: cannot dequantize "
                                      f"{tensor.tensor_type.name} ({exc})") from None
            array = np.asarray(array, dtype=np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))
            if ".attn_q." in tensor.name or ".attn_k." in tensor.name:
                array = unpermute(array, heads if ".attn_q." in tensor.name else kv_heads)
            out[hf_name(tensor.name)] = torch.from_numpy(array.copy())
        return out

    def tokenizer_files(self) -> dict[str, str]:
        """``tokenizer.json`` + ``tokenizer_config.json`` texts built from the metadata."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        kind = self.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ConversionError(f"{self.path}: tokenizer.ggml.model {kind!r} is not supported "
                                  "(only 'gpt2', byte-level BPE)")
        tokens = self.get("tokenizer.ggml.tokens")
        merges = [tuple(m.split(" ", 1)) for m in self.get("tokenizer.ggml.merges", [])]
        types = self.get("tokenizer.ggml.token_type", [1] * len(tokens))
        vocab = {}
        for i, token in enumerate(tokens):
            vocab.setdefault(token, i)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        pre = self.get("tokenizer.ggml.pre", "default")
        tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if pre == "smollm" else byte_level)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == CONTROL])
        tok.add_tokens([AddedToken(t, normalized=False) for t, ty in zip(tokens, types) if ty == USER_DEFINED])

        def token(key: str) -> str | None:
            tid = self.get(f"tokenizer.ggml.{key}")
            return None if tid is None or not 0 <= tid < len(tokens) else tokens[tid]

        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
                  "pad_token": token("padding_token_id"), "unk_token": token("unknown_token_id"),
                  "add_bos_token": bool(self.get("tokenizer.ggml.add_bos_token", False)),
                  "model_max_length": self.get("llama.context_length")}
        template = self.get("tokenizer.chat_template")
        if template:
            config["chat_template"] = template
        return {TOKENIZER_JSON: tok.to_str(), TOKENIZER_CONFIG: json.dumps(config, indent=2) + "\n"}


def import_gguf(path: str | Path, out_dir: str | Path, max_seq_len: int | None = None) -> Path:
    """A llama GGUF file -> our model directory (fp32 weights + tokenizer files)."""
    gguf_file = GGUFFile(path)
    hf = gguf_file.hf_config()
    config = config_from_hf(hf, str(gguf_file.path), max_seq_len)
    tensors = from_hf_state(gguf_file.hf_tensors(config.num_heads, config.num_kv_heads), config, str(gguf_file.path))
    return write_model(tensors, config, out_dir, gguf_file.tokenizer_files())
