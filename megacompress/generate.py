"""Generate text from a saved model: ``python -m megacompress.generate --model DIR --prompt "..."``.

``DIR`` is a ``save_pretrained`` directory (``model.safetensors`` + ``config.json``) of any
registered architecture (``config.json`` names it).

``--mode fast`` (default) generates with the architecture's caches: a GPT with its KV
cache, a GPTHF with its sentence caches (`megacompress.generation.gpthf`; the prompt is
split into sentences with an EOS after each finished one, as in training). ``--mode slow``
reruns the full model on the whole sequence for every token (any architecture); greedy
fast and slow print the same text.
Several ``--prompt`` flags are generated as one left-padded batch. With tensor
parallelism run it under ``torchrun --nproc-per-node TP -m megacompress.generate
--tensor-parallel-size TP ...``: every rank samples the same tokens, rank 0 prints.
"""

from __future__ import annotations

import argparse

import torch

from megacompress import cli
from megacompress.data.tokenizers import (TOKENIZER_KINDS, TokenizerMismatch, build_tokenizer, check_model_tokenizer,
                                          model_tokenizer)
from megacompress.generation import gpthf  # also registers GPTHF's fast generator
from megacompress.generation.fast import fast_generator
from megacompress.generation.sampling import SamplingConfig
from megacompress.generation.uncached import generate_uncached
from megacompress.models.registry import get_architecture, load_pretrained
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
                        help="fast: KV-cached (GPTHF: sentence caches); slow: rerun the whole sequence per token")
    parser.add_argument("--sentence-model", default=None,
                        help="GPTHF: Punkt model splitting the prompt (e.g. the train shard's .sentences.json)")
    parser.add_argument("--prompt-ends-sentence", action="store_true",
                        help="GPTHF: the prompt's last sentence is finished (an EOS follows it)")
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
    if tokenizer.vocab_size > model.config.vocab_size:
        raise TokenizerMismatch(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens but the model in "
                                f"{args.model} only {model.config.vocab_size}")
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    options = dict(sampling=sampling, eod_id=None if args.no_stop_at_eod else tokenizer.eod,
                   show_progress=state.get_rank() == 0)
    eos_id = None
    if "eos_mask" in get_architecture(model.config.architecture).inputs:  # a model over sentences
        from megacompress.data.sentences import SentenceSplitter  # NLTK import: only for sentence models

        eos_id = tokenizer.special_id("eos")
        splitter = SentenceSplitter.load(args.sentence_model) if args.sentence_model else None
        prompts = [gpthf.encode_prompt(tokenizer, p, eos_id, splitter, ends_sentence=args.prompt_ends_sentence)
                   for p in args.prompt]
    else:
        prompts = [tokenizer.encode(p) for p in args.prompt]
    with torch.inference_mode():
        if args.mode == "slow":
            out = generate_uncached(model, prompts, args.max_new_tokens, eos_id=eos_id, **options)
        else:
            sentences = {} if eos_id is None else {"eos_id": eos_id}
            out = fast_generator(model.config.architecture)(model, prompts, args.max_new_tokens, **options,
                                                            **sentences)
    if state.get_rank() == 0:
        for text, tokens in zip(args.prompt, out.tokens):  # sentence ends are not text
            print(f"=== prompt: {text!r}\n{text}{tokenizer.decode([t for t in tokens if t != eos_id])}")
    state.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
