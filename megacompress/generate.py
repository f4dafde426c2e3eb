"""Generate text from a saved model: ``python -m megacompress.generate --model DIR --prompt "..."``.

``DIR`` is a ``save_pretrained`` directory (``model.safetensors`` + ``config.json``) of any
registered architecture (``config.json`` names it).
Several ``--prompt`` flags are generated as one left-padded batch. With tensor
parallelism run it under ``torchrun --nproc-per-node TP -m megacompress.generate
--tensor-parallel-size TP ...``: every rank samples the same tokens, rank 0 prints.
"""

from __future__ import annotations

import argparse
import sys

import torch

from megacompress.data.tokenizers import build_tokenizer
from megacompress.generation.generate import generate
from megacompress.generation.sampling import SamplingConfig
from megacompress.models.registry import load_pretrained
from megacompress.parallel import state


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megacompress.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="save_pretrained directory")
    parser.add_argument("--prompt", action="append", required=True,
                        help="prompt text; repeat for a batch of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same on every rank)")
    parser.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "sentencepiece", "bytes"])
    parser.add_argument("--tokenizer-model", default=None, help="SentencePiece .model file")
    parser.add_argument("--no-stop-at-eod", action="store_true", help="keep generating after end-of-document")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state.initialize(tensor_parallel_size=args.tensor_parallel_size)
    tokenizer = build_tokenizer(args.tokenizer, args.tokenizer_model)
    model = load_pretrained(args.model).eval()
    if tokenizer.vocab_size > model.config.vocab_size:
        sys.exit(f"error: tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens but the model in "
                 f"{args.model} only {model.config.vocab_size}")
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    prompts = [tokenizer.encode(p) for p in args.prompt]
    with torch.inference_mode():
        out = generate(model, prompts, args.max_new_tokens, sampling=sampling,
                       eod_id=None if args.no_stop_at_eod else tokenizer.eod, show_progress=state.get_rank() == 0)
    if state.get_rank() == 0:
        for text, tokens in zip(args.prompt, out.tokens):
            print(f"=== prompt: {text!r}\n{text}{tokenizer.decode(tokens)}")
    state.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
