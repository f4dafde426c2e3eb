"""Generate text from a saved model: ``python -m megacompress.generate --model DIR --prompt "..."``.

``DIR`` is a ``save_pretrained`` directory (``model.safetensors`` + ``config.json``) of any
registered architecture (``config.json`` names it).

``--mode fast`` (default) generates with the architecture's caches: a GPT with its KV
cache, a method's model with the generator its package registers (`megacompress.generation.fast`;
a sentence-level model gets its prompt split into sentences as in training). ``--mode slow``
reruns the full model on the whole sequence for every token (any architecture); greedy
fast and slow print the same text.
One ``--prompt`` is printed as it is generated; several are generated as one left-padded
batch and printed at the end. With tensor
parallelism run it under ``torchrun --nproc-per-node TP -m megacompress.generate
--tensor-parallel-size TP ...``: every rank samples the same tokens, rank 0 prints.
"""

from __future__ import annotations

import argparse

import torch

from megacompress import cli
from megacompress.data.tokenizers import (TOKENIZER_KINDS, TokenizerMismatch, build_tokenizer, check_model_tokenizer,
                                          model_tokenizer)
from megacompress.generation.fast import add_generator_arguments, generator, prepare_tokenizer
from megacompress.generation.sampling import SamplingConfig
from megacompress.generation.stream import TextStream
from megacompress.generation.uncached import generate_uncached
from megacompress.models.registry import load_pretrained
from megacompress.parallel import state


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.parser("megacompress.generate", __doc__)
    parser.add_argument("--model", required=True, help="save_pretrained directory")
    parser.add_argument("--prompt", action="append", required=True,
                        help="prompt text; repeat for a batch of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate per prompt")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same on every rank)")
    parser.add_argument("--tokenizer", default=None, choices=TOKENIZER_KINDS,
                        help="default: the tokenizer the model directory records (export writes it; an imported "
                             "model's tokenizer.json), else gpt2; another one than recorded is refused")
    parser.add_argument("--tokenizer-model", default=None, help="SentencePiece .model file / hf tokenizer.json")
    parser.add_argument("--no-stop-at-eod", action="store_true", help="keep generating after end-of-document")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="run under torchrun with this many ranks")
    cli.add_device_flag(parser)
    parser.add_argument("--mode", choices=["fast", "slow"], default="fast",
                        help="fast: the architecture's cached generator; slow: rerun the whole sequence per token")
    add_generator_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.resolve_device(args.device)
    state.initialize(tensor_parallel_size=args.tensor_parallel_size, backend="gloo" if device.type == "cpu" else None)
    model = load_pretrained(args.model).eval().to(device)  # first: a wrong --model fails before any tokenizer note
    if args.tokenizer:
        tokenizer = build_tokenizer(args.tokenizer, args.tokenizer_model)
        check_model_tokenizer(args.model, tokenizer)
    else:
        tokenizer = model_tokenizer(args.model)
    tokenizer = prepare_tokenizer(tokenizer, args)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise TokenizerMismatch(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens but the model in "
                                f"{args.model} only {model.config.vocab_size}")
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    options = dict(sampling=sampling, eod_id=None if args.no_stop_at_eod else tokenizer.eod,
                   show_progress=state.get_rank() == 0)
    spec = generator(model.config.architecture)
    prompts, extra = spec.encode(tokenizer, args.prompt, args)
    eos_id = extra.get("eos_id")
    streams = [TextStream(tokenizer, skip={eos_id}) for _ in args.prompt]  # sentence ends are not text
    if state.get_rank() == 0 and len(args.prompt) == 1:  # one prompt: its text as it arrives
        print(f"=== prompt: {args.prompt[0]!r}\n{args.prompt[0]}", end="", flush=True)
        options["on_tokens"] = lambda tokens: streams[0].update(tokens[0])
    with torch.inference_mode():
        run = generate_uncached if args.mode == "slow" else spec.generate
        out = run(model, prompts, args.max_new_tokens, **options, **extra)
    if state.get_rank() == 0:
        for text, tokens, stream in zip(args.prompt, out.tokens, streams):
            if len(args.prompt) > 1:
                print(f"=== prompt: {text!r}\n{text}", end="")
            stream.close(tokens)
    state.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
