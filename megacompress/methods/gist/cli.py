"""Gist tokens (docs/gist.md): ``megacompress gist {init,prepare,compress,generate,evaluate,perplexity}``
(also ``python -m megacompress.gist ...``).

  init      --model DIR --k K --out GIST_DIR [--variant gist|pos_control|neg_control]
            add <GIST> (embedding = mean of the vocabulary's), architecture "gist"
  prepare   --model GIST_DIR --data SOURCE --out PREFIX [--fields instruction=COL,input=COL,output=COL]
            instruction records -> the shard of data.kind "instruction" (train with
            python -m megacompress.train, configs/gist-*.yaml)
  compress  --model GIST_DIR --instructions FILE --out CACHE
            store the gist K/V of every instruction (safetensors + JSON index)
  generate  --model GIST_DIR --cache CACHE --inputs FILE --out OUT.jsonl [--no-cache]
            answer {instruction, input} records in batches from the stored caches
  evaluate  --model GIST_DIR --data [NAME=]SOURCE... [--compare NAME=DIR...] [--out REPORT.json]
            ROUGE-L, exact match, lengths; FLOPs / wall-clock / KV bytes of gist caching;
            several splits and models: one table with paired intervals (REPORT.json + REPORT.png)
  perplexity --model DIR --text FILE [--max-bytes N]
            bits/byte of any model directory with tokenizer.json on a text (import check)

Records (SOURCE) are Alpaca-style {instruction, input, output}: a JSON list or JSONL file, a
parquet file, a directory written by ``datasets``' ``save_to_disk``, or ``hf:NAME[:SPLIT]``
(``datasets.load_dataset``); ``--fields`` maps other column names (`sources`). A record too
long for the model's ``max_seq_len`` is served with the end of its input cut (docs/gist.md),
counted in the summary. The tokenizer is the model directory's ``tokenizer.json``
(``--tokenizer`` for another directory, e.g. the gist model that a training export came from).

``compress``, ``generate`` and ``evaluate`` run on one process, or with tensor parallelism
under ``torchrun --nproc-per-node N -m megacompress.gist CMD --tensor-parallel-size N ...``:
every rank holds 1/N of the heads and computes the same tokens, rank 0 writes. A cache holds
all heads whatever the TP size that made it, so any TP size can serve it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from megacompress import cli
from megacompress.atomic import write_text_atomic
from megacompress.parallel import state


def _positive(text: str) -> int:
    """A count flag (``--k``, ``--batch-size``, ...): a bad one is a usage error, not a traceback."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _common(p: argparse.ArgumentParser, model_help: str = "gist model directory") -> None:
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--tokenizer", default=None, help="directory with tokenizer.json (default: --model)")


SOURCE_HELP = ("a .json list / .jsonl / .parquet file, a datasets save_to_disk directory, or hf:NAME[:SPLIT] "
               "(the datasets library; offline, save_to_disk it elsewhere and pass the directory)")


def _fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fields", default=None, metavar="FIELD=COL,...",
                   help="take the record fields from other columns: instruction=COL,input=COL,output=COL (any "
                        "subset; e.g. Dolly: instruction=instruction,input=context,output=response)")


def _parallel(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensor-parallel-size", type=_positive, default=1,
                   help="run under torchrun --nproc-per-node N with N = this (every rank holds 1/N of the heads)")
    cli.add_device_flag(p)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.parser("megacompress.gist", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="make a gist model from a pretrained one")
    p.add_argument("--model", required=True, help="pretrained model directory (e.g. from import-gguf)")
    p.add_argument("--k", type=_positive, required=True, help="gist tokens per prompt (paper: 1, 2, 5, 10)")
    p.add_argument("--variant", default="gist", choices=["gist", "pos_control", "neg_control"],
                   help="mask variant: gist (later tokens see only the gists), pos_control (plain causal, "
                        "no compression), neg_control (later tokens see neither instruction nor gists)")
    p.add_argument("--out", required=True, type=Path, help="output gist model directory")
    p = sub.add_parser("prepare", help="instruction records -> training shard (data.kind instruction)")
    _common(p)
    p.add_argument("--data", required=True, help="records {instruction, input, output}: " + SOURCE_HELP)
    _fields(p)
    p.add_argument("--out", required=True, help="shard prefix")
    p = sub.add_parser("compress", help="store the gist K/V of instructions")
    _common(p)
    _parallel(p)
    p.add_argument("--instructions", required=True, help="records with an 'instruction' field: " + SOURCE_HELP)
    _fields(p)
    p.add_argument("--out", required=True, type=Path, help="cache directory")
    p.add_argument("--batch-size", type=_positive, default=8, help="instructions per forward pass")
    p = sub.add_parser("generate", help="answer records from stored gist caches")
    _common(p)
    _parallel(p)
    p.add_argument("--cache", type=Path, help="cache directory from `compress` (not with --no-cache)")
    p.add_argument("--inputs", required=True, help="records {instruction, input}: " + SOURCE_HELP)
    _fields(p)
    p.add_argument("--out", required=True, type=Path, help="JSONL: one line per input record, in order")
    p.add_argument("--batch-size", type=_positive, default=8, help="records generated together (one batch)")
    p.add_argument("--max-new-tokens", type=_positive, default=256,
                   help="most tokens generated per record (stops earlier at end-of-document)")
    p.add_argument("--no-cache", action="store_true", help="run the gist-masked model over the full prompt")
    p = sub.add_parser("evaluate", help="quality and efficiency on records with outputs")
    _common(p)
    _parallel(p)
    p.add_argument("--data", required=True, nargs="+", metavar="[NAME=]SOURCE",
                   help="one or more evaluation splits of records {instruction, input, output}, each named NAME or "
                        "by its file stem (e.g. seen=seen.jsonl unseen=unseen.jsonl human=human.jsonl); a SOURCE is "
                        + SOURCE_HELP)
    _fields(p)
    p.add_argument("--compare", nargs="+", default=[], metavar="NAME=DIR",
                   help="more models scored on the same splits, e.g. pos_control=DIR neg_control=DIR: the report "
                        "gives each split's ROUGE-L per model and paired 95%% bootstrap intervals of --model vs each")
    p.add_argument("--out", type=Path, default=None,
                   help="report JSON, with every record's output and ROUGE-L, and beside it a bar chart of the "
                        "table (REPORT.png) (default: print the summary only)")
    p.add_argument("--batch-size", type=_positive, default=8, help="records generated together (one batch)")
    p.add_argument("--max-new-tokens", type=_positive, default=256,
                   help="most tokens generated per record (stops earlier at end-of-document)")
    p.add_argument("--limit", type=int, default=0, help="first N records only (0 = all)")
    p.add_argument("--efficiency-tokens", type=_positive, default=16,
                   help="new tokens per row in the FLOPs / wall-clock comparison")
    p = sub.add_parser("perplexity", help="bits/byte of a model on a text file (checks an import)")
    _common(p, "model directory with tokenizer.json")
    p.add_argument("--text", required=True, help="UTF-8 text file")
    p.add_argument("--max-bytes", type=int, default=100_000, help="first N bytes (0 = all)")
    p.add_argument("--window", type=_positive, default=512,
                   help="tokens per scored window (the text is scored in non-overlapping windows of this length)")
    cli.add_device_flag(p)
    args = parser.parse_args(argv)
    if args.command == "generate" and (args.cache is None) != args.no_cache:
        parser.error("generate needs --cache CACHE, or --no-cache (not both)")
    return args


def _load(args: argparse.Namespace, device: torch.device):
    """(model on ``device``, format, tokenizer) for the gist model of ``args``."""
    from megacompress.methods.gist.data import InstructionFormat
    from megacompress.data.tokenizers import build_tokenizer
    from megacompress.models import load_pretrained
    from megacompress.models.config import ConfigError

    model = load_pretrained(args.model).eval().to(device)
    if model.config.architecture != "gist":
        raise ConfigError(f"{args.model}: architecture {model.config.architecture!r}, not a gist model "
                          "(make one with `python -m megacompress.gist init`)")
    tokenizer = build_tokenizer("hf", args.tokenizer or args.model)
    return model, InstructionFormat(tokenizer, model.config.gist_tokens, model.config.max_seq_len), tokenizer


def _records(path: str, need_output: bool, fields: str | None = None) -> list[dict]:
    from megacompress.methods.gist.data import InstructionDataError, record_problem
    from megacompress.methods.gist.sources import load_records, parse_fields

    records = load_records(path, parse_fields(fields), need_output=need_output)
    if not records:
        raise InstructionDataError(f"{path}: no records")
    for n, record in enumerate(records, 1):
        problem = record_problem(record, need_output)
        if problem:
            raise InstructionDataError(f"{path}: record {n}: {problem.replace('_', ' ')}")
    return records


def run(args: argparse.Namespace) -> str:
    from megacompress.methods.gist import cache as gist_cache, generate as gist_generate

    if args.command == "init":
        from megacompress.methods.gist.init import init_gist_model

        return f"wrote {init_gist_model(args.model, args.k, args.out, args.variant)}"
    if args.command == "prepare":
        from megacompress.data.tokenizers import build_tokenizer
        from megacompress.methods.gist.data import prepare_instruction_shard
        from megacompress.methods.gist.sources import parse_fields
        from megacompress.models import pretrained

        k = pretrained.load_config(args.model).gist_tokens
        meta = prepare_instruction_shard(args.data, build_tokenizer("hf", args.tokenizer or args.model), k, args.out,
                                         fields=parse_fields(args.fields))
        return f"wrote {args.out}: {json.dumps(meta['instruction'])}"
    if args.command == "perplexity":
        return json.dumps(_perplexity(args))
    device = cli.resolve_device(args.device)
    _init_parallel(args.tensor_parallel_size, device)
    model, fmt, tokenizer = _load(args, device)
    model_hash = gist_cache.model_identity(args.model)
    writer = state.get_rank() == 0
    if args.command == "compress":
        instructions = list(dict.fromkeys(r["instruction"] for r in _records(args.instructions, False, args.fields)))
        entries = gist_cache.compress(model, fmt, instructions, args.batch_size)
        if writer:
            gist_cache.save_cache(args.out, instructions, entries, model_hash=model_hash, model_dir=args.model,
                                  k=fmt.k, tokenizer_fingerprint=tokenizer.fingerprint())
        cut = sum(fmt.instruction_cut(text) > 0 for text in instructions)
        return f"wrote {args.out}: {len(entries)} instructions, k={fmt.k}" + (
            f" ({cut} too long for max_seq_len {fmt.max_seq_len}: their end cut, gists kept)" if cut else "")
    if args.command == "generate":
        records = _records(args.inputs, False, args.fields)
        cache = None if args.no_cache else gist_cache.GistCache(args.cache, model, model_hash=model_hash,
                                                                tokenizer_fingerprint=tokenizer.fingerprint())
        counts: dict = {}
        outputs = gist_generate.answer(model, fmt, records, args.max_new_tokens, cache=cache,
                                       batch_size=args.batch_size, show_progress=writer, counts=counts)
        lines = [json.dumps({"instruction": r["instruction"], "input": r.get("input", ""),
                             "output": tokenizer.decode(o)}) for r, o in zip(records, outputs)]
        if writer:
            write_text_atomic(args.out, "".join(line + "\n" for line in lines))
        return f"wrote {args.out}: {len(lines)} outputs; truncation {json.dumps(counts)}"
    return _evaluate(args, model, fmt, tokenizer, writer)


def _init_parallel(tensor_parallel_size: int, device: torch.device) -> None:
    """Tensor parallelism only: N ranks under torchrun form one TP group (data parallelism would
    only repeat the same work); gloo for a CPU run, also on a GPU machine."""
    state.initialize(tensor_parallel_size=tensor_parallel_size, backend="gloo" if device.type == "cpu" else None)
    if state.get_data_parallel_world_size() != 1:
        raise cli.DeviceError(f"{state.get_world_size()} processes for --tensor-parallel-size "
                              f"{tensor_parallel_size}: run with as many processes as the tensor-parallel size")


def _perplexity(args) -> dict:
    from megacompress.data.tokenizers import build_tokenizer
    from megacompress.methods.gist.evaluate import bits_per_byte
    from megacompress.models import load_pretrained

    raw = Path(args.text).read_bytes()[:args.max_bytes or None]
    text = raw.decode("utf-8", errors="ignore")  # a cut may split the last character
    model = load_pretrained(args.model).eval().to(cli.resolve_device(args.device))
    result = bits_per_byte(model, build_tokenizer("hf", args.tokenizer or args.model), text, args.window)
    return {"model": str(args.model), "text": str(args.text), **result}


def _named(items: list[str], flag: str, stem: bool) -> list[tuple[str, str]]:
    """``NAME=VALUE`` items (``stem``: a bare VALUE is named by its file stem / hub name) -> [(name, value)]."""
    from megacompress.methods.gist.data import InstructionDataError
    from megacompress.methods.gist.sources import HF_PREFIX

    named = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or "/" in name or name.startswith(HF_PREFIX) or not name or not value:
            if not stem:
                raise InstructionDataError(f"{flag} {item!r}: expected NAME=DIR")
            name, value = Path(item.rstrip("/")).stem, item
            if item.startswith(HF_PREFIX):  # hf:ORG/NAME:SPLIT -> NAME:SPLIT
                name = item[len(HF_PREFIX):].rsplit("/", 1)[-1]
        named.append((name, value))
    names = [name for name, _ in named]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InstructionDataError(f"{flag}: the name(s) {', '.join(duplicates)} given twice (name them NAME=...)")
    return named


def _evaluate(args, model, fmt, tokenizer, writer: bool) -> str:
    """Every model (``--model`` = the reference, then ``--compare``) on every split of ``--data``:
    one table (`evaluate.comparison_table`). One split and no ``--compare`` writes the report of
    one evaluation as before (ROUGE-L, per_record, efficiency), with ``truncation`` and ``table``."""
    from megacompress.methods.gist import evaluate as gist_eval
    from megacompress.methods.gist.data import InstructionDataError

    splits = _named(args.data, "--data", stem=True)
    others = _named(args.compare, "--compare", stem=False)
    records = {name: _records(spec, True, args.fields)[:args.limit or None] for name, spec in splits}
    reference = model.config.gist_variant
    if reference in dict(others):
        raise InstructionDataError(f"--compare: {reference!r} names --model ({args.model}, variant {reference}); "
                                   "give the compared models other names")
    device = model.output_weight.device
    results: dict[str, dict[str, dict]] = {}
    models: dict[str, dict] = {}
    efficiency = None
    for name, directory in [(reference, args.model), *others]:
        if name != reference:
            model, fmt, tokenizer = _load(argparse.Namespace(model=directory, tokenizer=args.tokenizer), device)
        models[name] = {"model": str(directory), "variant": model.config.gist_variant, "k": fmt.k}
        results[name] = {}
        for split, rows in records.items():
            report, cache = gist_eval.score(model, fmt, tokenizer, rows, args.max_new_tokens,
                                            batch_size=args.batch_size, show_progress=writer)
            results[name][split] = report
            if name == reference and efficiency is None and cache is not None:
                batch = rows[:args.batch_size]
                efficiency = gist_eval.efficiency(model, fmt, batch, [cache[r["instruction"]] for r in batch],
                                                  args.efficiency_tokens)
        del model
    comparisons, table = gist_eval.comparison_table(results, reference)
    if len(splits) == 1 and not others:
        report = dict(results[reference][splits[0][0]], efficiency=efficiency)
        report.update(model=str(args.model), k=fmt.k, variant=reference, data=str(splits[0][1]),
                      max_new_tokens=args.max_new_tokens, table=table)
        summary = {key: value for key, value in report.items() if key not in ("per_record", "table")}
    else:
        report = {"reference": reference, "models": models, "max_new_tokens": args.max_new_tokens, "table": table,
                  "splits": {split: {"data": str(spec), "records": len(records[split]),
                                     "models": {name: results[name][split] for name in results},
                                     "comparisons": comparisons[split]} for split, spec in splits},
                  "efficiency": efficiency}
        summary = {"reference": reference, "models": models, "table": table}
    if args.out is not None and writer:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
        gist_eval.plot_table(table, reference, args.out.with_suffix(".png"))
    return json.dumps(summary, indent=2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with torch.no_grad():  # scoped: main() is also called in-process (tests, notebooks)
            message = run(args)
        if not state.is_initialized() or state.get_rank() == 0:
            print(message)
    finally:
        if getattr(args, "tensor_parallel_size", 1) > 1:  # the process group this run made
            state.destroy()
    return 0

