"""The model-conversion subcommands of ``tools/convert_checkpoint.py`` (wired in by
``megacompress.training.convert``):

``import-hf HF_DIR OUT [--max-seq-len N]``
    Hugging Face Llama / Mistral / Qwen2 directory (``config.json`` + ``*.safetensors`` +
    ``tokenizer.json``) -> our model directory (`megacompress.models.hf_llama`).
``import-gguf FILE.gguf OUT [--max-seq-len N]``
    llama.cpp GGUF (llama architecture, any quantization, dequantized to fp32) -> our model
    directory (`megacompress.models.gguf_import`).
``export-hf MODEL OUT``
    our model directory -> HF Llama layout (Qwen2 with q/k/v biases), loadable by
    ``AutoModelForCausalLM.from_pretrained``.

``--max-seq-len`` sets the model's ``max_seq_len`` (default: the source's context length,
``max_position_embeddings``; a Mistral / Qwen2 sliding window clamps it, `hf_llama`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megacompress.models.hf_llama import ConversionError, export_hf, import_hf

__all__ = ["ConversionError", "add_model_commands", "run_model_command"]


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    for name, source, help_text, source_help in (
            ("import-hf", "hf_dir", "Hugging Face Llama / Mistral / Qwen2 directory -> our model directory",
             "directory with config.json, *.safetensors and the tokenizer files"),
            ("import-gguf", "gguf_file", "llama.cpp GGUF file -> our model directory (fp32)",
             "a llama-architecture .gguf file (F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(source, type=Path, help=source_help)
        p.add_argument("out_dir", type=Path, help="output model directory")
        p.add_argument("--max-seq-len", type=int, default=None,
                       help="the model's max_seq_len (default: the source's context length, "
                            "clamped to a sliding window)")
    p = sub.add_parser("export-hf", help="our model directory -> Hugging Face Llama (or Qwen2) layout + tokenizer")
    p.add_argument("model_dir", type=Path, help="save_pretrained / import directory with tokenizer.json")
    p.add_argument("out_dir", type=Path, help="output directory (Hugging Face Llama layout)")


def run_model_command(args: argparse.Namespace) -> Path:
    if args.command == "import-hf":
        return import_hf(args.hf_dir, args.out_dir, args.max_seq_len)
    if args.command == "import-gguf":
        from megacompress.models.gguf_import import import_gguf

        return import_gguf(args.gguf_file, args.out_dir, args.max_seq_len)
    return export_hf(args.model_dir, args.out_dir)
