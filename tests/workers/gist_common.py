"""Tiny models and tokenizers written by the gist / conversion tests themselves (no downloads).

* `tiny_tokenizer_files()`: a byte-level BPE ``tokenizer.json`` (~300 tokens, trained on a
  few sentences) + ``tokenizer_config.json`` with SmolLM-like specials;
* `write_tiny_hf_llama(dir)`: a random ``transformers`` Llama (GQA, untied head) saved in HF
  layout with that tokenizer;
* `write_tiny_gguf(path, hf_dir)`: the same weights as a llama.cpp GGUF (q/k rows permuted
  as llama.cpp does, FFN tensors Q8_0-quantized, the rest F32) with the tokenizer in its
  metadata;
* `tiny_gist_model(tmp, k)`: our random tiny GPT on that tokenizer, made a gist model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TEXT = ["Instruction: Say hello.\nInput: the world\nOutput: Hello, world!",
        "The quick brown fox jumps over the lazy dog 12345 times.",
        "Instruction: Add the numbers.\nInput: 2 and 3\nOutput: 5",
        "Rewrite the sentence in the past tense. She walks to school every day."] * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5)


def tiny_tokenizer_files() -> dict[str, str]:
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(TEXT, vocab_size=320, min_frequency=2, special_tokens=SPECIALS, show_progress=False)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "add_bos_token": False, "clean_up_tokenization_spaces": False}
    return {"tokenizer.json": tok._tokenizer.to_str(), "tokenizer_config.json": json.dumps(config)}


def write_tokenizer(directory: Path) -> int:
    """Write the tiny tokenizer files into ``directory``; returns the vocabulary size."""
    from tokenizers import Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    for name, text in tiny_tokenizer_files().items():
        (directory / name).write_text(text)
    return Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def write_tiny_hf_llama(directory: Path, *, tied: bool = False, seed: int = 0):
    """A random HF Llama in ``directory``; returns the model (fp32, eval)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = write_tokenizer(directory)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
                                         **TINY)).eval()
    with torch.no_grad():  # norms away from 1 so that a mix-up of the norm tensors shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    return model


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf q/k permutation (rows [h, 2, D/2] -> [h, D/2, 2])."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path, hf_dir: Path, model) -> dict[str, np.ndarray]:
    """Write ``model`` (a tiny HF Llama or Qwen2 with this module's tokenizer) as GGUF the way
    llama.cpp's converter does (q/k rows permuted for ``llama``; ``qwen2`` keeps them and its
    q/k/v biases); returns the HF-named weights the file holds after quantization (the
    reference for an importer)."""
    import gguf
    from gguf import GGMLQuantizationType

    cfg = model.config
    arch = cfg.model_type
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_add_bos_token(False)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    reference = {}
    for name, tensor in model.state_dict().items():
        array = tensor.float().numpy()
        if name in names:
            gguf_name = names[name]
        else:
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            gguf_name = f"blk.{i}.{layer[module]}.{kind}"
        stored = array
        if arch == "llama" and ("attn_q" in gguf_name or "attn_k" in gguf_name):
            stored = llama_cpp_permute(array, cfg.num_attention_heads if "attn_q" in gguf_name
                                       else cfg.num_key_value_heads)
        if "ffn_" in gguf_name and "norm" not in gguf_name:
            quantized = gguf.quants.quantize(stored, GGMLQuantizationType.Q8_0)
            w.add_tensor(gguf_name, quantized, raw_shape=quantized.shape, raw_dtype=GGMLQuantizationType.Q8_0)
            array = gguf.quants.dequantize(quantized, GGMLQuantizationType.Q8_0).reshape(array.shape)
        else:
            w.add_tensor(gguf_name, stored)
        reference[name] = array
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


def tiny_gist_model(tmp: Path, k: int, *, variant: str = "gist", seed: int = 0) -> Path:
    """Our random tiny GPT on the tiny tokenizer, turned into a gist model with k gists."""
    from megacompress.models import GPT, ModelConfig
    from megacompress.methods.gist.init import init_gist_model

    base = tmp / "base"
    vocab = write_tokenizer(base)
    config = ModelConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         ffn_hidden_size=64, max_seq_len=128)
    GPT(config, seed=seed).save_pretrained(base)
    return init_gist_model(base, k, tmp / f"gist{k}", variant=variant)
