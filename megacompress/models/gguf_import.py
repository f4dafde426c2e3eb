"""llama.cpp GGUF files -> our model directory (``tools/convert_checkpoint.py import-gguf``).

Read with ``gguf.GGUFReader`` (memory-mapped); every tensor is dequantized to fp32 with
``gguf.quants.dequantize`` (F32/F16/BF16/Q8_0/Q4_0/Q4_1/K-quants ...). GGUF stores shapes
in ggml order (fastest dimension first), so a weight listed as ``[in, out]`` is the
``[out, in]`` matrix of PyTorch. Names map onto Hugging Face's Llama names, then
`hf_llama.from_hf_state` does the rest:

    token_embd -> model.embed_tokens      blk.i.attn_{q,k,v,output} -> self_attn.{q,k,v,o}_proj
    output_norm -> model.norm             blk.i.attn_norm / ffn_norm -> input / post_attention_layernorm
    output -> lm_head (absent: tied)      blk.i.ffn_{gate,up,down} -> mlp.{gate,up,down}_proj

Two GGUF architectures map onto our model: ``llama`` (Llama, Mistral) and ``qwen2`` (q/k/v
biases, ``blk.i.attn_{q,k,v}.bias``; metadata keys start with ``qwen2.``). For ``llama``,
llama.cpp's converter permutes the rows of attn_q and attn_k (per head, from rotate-half
to interleaved pairs, its RoPE layout): original rows ``[h, 2, D/2]`` (two halves per head)
are stored as ``[h, D/2, 2]``; `unpermute` swaps them back (attn_k uses the KV head count).
``qwen2`` files keep Hugging Face's row order (llama.cpp runs them with NeoX-style RoPE).

The tokenizer is rebuilt from the metadata with the ``tokenizers`` library, for two values of
``tokenizer.ggml.model`` (others raise `ConversionError`):

* ``gpt2``: byte-level BPE, tokens + merges (the SmolLM / GPT-2 / Llama-3 family);
  ``tokenizer.ggml.pre`` picks the pre-tokenizer (``smollm``: single digits, then GPT-2's
  byte-level split, as llama.cpp does).
* ``llama``: SentencePiece BPE (Llama-2 / TinyLlama / Mistral): pieces with "▁" for spaces,
  merges derived from ``tokenizer.ggml.scores`` as Hugging Face does for GGUF, byte fallback
  to the ``<0xXX>`` pieces. Like SentencePiece and llama.cpp (and the ``tokenizer.json`` of
  those models' Hugging Face repos), a "▁" is put before the text unless
  ``tokenizer.ggml.add_space_prefix`` is false (the decoder drops it again), spaces become
  "▁", and there is no pre-tokenizer splitting.

Control tokens (token_type 3) become special tokens, user-defined ones (4) added tokens.
BOS/EOS/unk/pad tokens, ``add_bos_token`` (default: true for ``llama``, as llama.cpp does)
and ``add_eos_token`` go to ``tokenizer_config.json``; the two flags also give
``tokenizer.json`` a post-processor that adds those tokens (for transformers; our
`HFTokenizer` never adds special ids itself and reads ``add_bos_token`` from the config).
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
SPACE = "\u2581"  # SentencePiece's meta symbol for a space


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: file rows [heads, D/2, 2] -> [heads, 2, D/2]."""
    rows, cols = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def hf_name(name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES and parts[3] in ("weight", "bias"):
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return name  # unknown tensors are reported by from_hf_state


def spm_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary, as Hugging Face derives them
    (``tokenization_utils_base.generate_merges``): every split of a piece into two pieces,
    best score first (ties: the longer left part, then the longer right part, then file order)."""
    ranked = []
    for piece, score in scores.items():
        pairs = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        ranked.extend((left, right, score) for left, right in sorted(pairs, key=lambda p: (vocab[p[0]], vocab[p[1]])))
    ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in ranked]


ARCHITECTURES = ("llama", "qwen2")  # general.architecture values that map onto our model


class GGUFFile:
    """Metadata, fp32 tensors and tokenizer of one llama- or qwen2-architecture GGUF file."""

    def __init__(self, path: str | Path):
        from gguf import GGUFReader

        self.path = Path(path)
        try:
            self.reader = GGUFReader(self.path)
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{self.path}: not a readable GGUF file ({exc})") from None
        self.arch = self.get("general.architecture")
        if self.arch not in ARCHITECTURES:
            raise ConversionError(f"{self.path}: general.architecture is {self.arch!r}; supported: 'llama' "
                                  "(Llama, Mistral) and 'qwen2'")

    def get(self, key: str, default=None):
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def hf_config(self) -> dict:
        """The metadata as a Hugging Face ``LlamaConfig`` / ``Qwen2Config`` dict."""
        arch = self.arch

        def need(key: str):
            value = self.get(f"{arch}.{key}")
            if value is None:
                raise ConversionError(f"{self.path}: metadata key {arch}.{key} is missing")
            return value

        scaling = self.get(f"{arch}.rope.scaling.type")
        if scaling not in (None, "none") or any(t.name == "rope_freqs.weight" for t in self.reader.tensors):
            raise ConversionError(f"{self.path}: RoPE scaling ({scaling or 'rope_freqs tensor, Llama-3.1'}) is not "
                                  "supported from GGUF; import the Hugging Face checkpoint with import-hf")
        return {"model_type": arch,
                "vocab_size": self.get(f"{arch}.vocab_size") or len(self.get("tokenizer.ggml.tokens", [])),
                "hidden_size": need("embedding_length"), "num_hidden_layers": need("block_count"),
                "num_attention_heads": need("attention.head_count"),
                "num_key_value_heads": self.get(f"{arch}.attention.head_count_kv"),
                "intermediate_size": need("feed_forward_length"), "max_position_embeddings": need("context_length"),
                "rope_theta": self.get(f"{arch}.rope.freq_base", 10000.0),
                "rms_norm_eps": need("attention.layer_norm_rms_epsilon"),
                "tie_word_embeddings": not any(t.name == "output.weight" for t in self.reader.tensors)}

    def hf_tensors(self, heads: int, kv_heads: int) -> dict[str, torch.Tensor]:
        """All tensors, dequantized to fp32, under Hugging Face names, q/k rows un-permuted (``llama``)."""
        from gguf.quants import dequantize

        out = {}
        for tensor in self.reader.tensors:
            try:
                array = dequantize(tensor.data, tensor.tensor_type)
            except NotImplementedError as exc:
                raise ConversionError(f"{self.path}: tensor {tensor.name}: cannot dequantize "
                                      f"{tensor.tensor_type.name} ({exc})") from None
            array = np.asarray(array, dtype=np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))
            if self.arch == "llama" and (".attn_q." in tensor.name or ".attn_k." in tensor.name):
                array = unpermute(array, heads if ".attn_q." in tensor.name else kv_heads)
            out[hf_name(tensor.name)] = torch.from_numpy(array.copy())
        return out

    def tokenizer_files(self) -> dict[str, str]:
        """``tokenizer.json`` + ``tokenizer_config.json`` texts built from the metadata."""
        from tokenizers import AddedToken, processors

        kind = self.get("tokenizer.ggml.model")
        if kind not in ("gpt2", "llama"):
            raise ConversionError(f"{self.path}: tokenizer.ggml.model {kind!r} is not supported "
                                  "(supported: 'gpt2', byte-level BPE; 'llama', SentencePiece BPE)")
        tokens = self.get("tokenizer.ggml.tokens")
        types = self.get("tokenizer.ggml.token_type", [1] * len(tokens))
        vocab = {}
        for i, token in enumerate(tokens):
            vocab.setdefault(token, i)

        def token(key: str) -> str | None:
            tid = self.get(f"tokenizer.ggml.{key}")
            return None if tid is None or not 0 <= tid < len(tokens) else tokens[tid]

        tok = (self._bpe_tokenizer(vocab) if kind == "gpt2"
               else self._spm_tokenizer(tokens, vocab, token("unknown_token_id")))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == CONTROL])
        tok.add_tokens([AddedToken(t, normalized=False) for t, ty in zip(tokens, types) if ty == USER_DEFINED])
        bos, eos = token("bos_token_id"), token("eos_token_id")
        add_bos = bos is not None and bool(self.get("tokenizer.ggml.add_bos_token", kind == "llama"))
        add_eos = eos is not None and bool(self.get("tokenizer.ggml.add_eos_token", False))
        if add_bos or add_eos:  # for transformers' encode (our HFTokenizer adds no special tokens itself)
            single = [f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos
            pair = single + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos
            specials = [(t, vocab[t]) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
            tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "bos_token": bos, "eos_token": eos, "pad_token": token("padding_token_id"),
                  "unk_token": token("unknown_token_id"),
                  "add_bos_token": add_bos, "add_eos_token": add_eos,
                  "model_max_length": self.get(f"{self.arch}.context_length")}
        template = self.get("tokenizer.chat_template")
        if template:
            config["chat_template"] = template
        return {TOKENIZER_JSON: tok.to_str(), TOKENIZER_CONFIG: json.dumps(config, indent=2) + "\n"}

    def _merges(self) -> list[tuple[str, str]] | None:
        """``tokenizer.ggml.merges`` (``"left right"`` strings) as pairs; None when the file has none."""
        merges = self.get("tokenizer.ggml.merges")
        return None if merges is None else [tuple(m.split(" ", 1)) for m in merges]

    def _bpe_tokenizer(self, vocab: dict[str, int]):
        """Byte-level BPE (``gpt2``): the file's merges, GPT-2's byte-level split and decoder."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE(vocab=vocab, merges=self._merges() or [], fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        pre = self.get("tokenizer.ggml.pre", "default")
        tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if pre == "smollm" else byte_level)
        tok.decoder = decoders.ByteLevel()
        return tok

    def _spm_tokenizer(self, tokens: list[str], vocab: dict[str, int], unk: str | None):
        """SentencePiece BPE (``llama``): merges from the file, else from the scores; byte fallback."""
        from tokenizers import Tokenizer, decoders, models, normalizers

        merges, scores = self._merges(), self.get("tokenizer.ggml.scores")
        if merges is None and scores is None:
            raise ConversionError(f"{self.path}: a 'llama' tokenizer needs tokenizer.ggml.scores (or merges)")
        merges = merges if merges is not None else spm_merges(vocab, dict(zip(tokens, scores)))
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        steps = [normalizers.Replace(" ", SPACE)]
        decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        if self.get("tokenizer.ggml.add_space_prefix", True):
            steps.insert(0, normalizers.Prepend(SPACE))
            decode.append(decoders.Strip(" ", 1, 0))  # the prefix space
        tok.normalizer = normalizers.Sequence(steps)
        tok.decoder = decoders.Sequence(decode)
        return tok


def import_gguf(path: str | Path, out_dir: str | Path, max_seq_len: int | None = None) -> Path:
    """A llama / qwen2 GGUF file -> our model directory (fp32 weights + tokenizer files)."""
    gguf_file = GGUFFile(path)
    hf = gguf_file.hf_config()
    config = config_from_hf(hf, str(gguf_file.path), max_seq_len)
    tensors = from_hf_state(gguf_file.hf_tensors(config.num_heads, config.num_kv_heads), config, str(gguf_file.path))
    return write_model(tensors, config, out_dir, gguf_file.tokenizer_files())
