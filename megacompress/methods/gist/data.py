"""Instruction records in the gist format (docs/gist.md, "Format") and the ``instruction`` dataset kind.

Format, in the model's own tokenizer (k = number of gists)::

    [bos] "Instruction: {instruction}\\n" <GIST>*k "\\nInput:" " {input}" "\\nOutput:" " {output}" eod
    `------------ prefix (compressed) ------------'`------ input segment -------'`- output -'

Each quoted piece is encoded on its own (the same pieces at training and at inference,
so cached prompts see the tokens they were trained on), every piece after the first as a
continuation (`Tokenizer.encode_continuation`: a SentencePiece-style tokenizer puts no "▁"
before it, so the tokens spell exactly the text above); ``" {input}"`` is empty for an
empty input; ``bos`` only when the tokenizer says prompts start with it (``add_bos``).
Loss is only on the output tokens (including the final eod).

Records are Alpaca-style objects ``{"instruction", "input", "output"}`` in a JSON list or
JSONL file (`read_records`), a parquet file, a ``datasets`` save_to_disk directory or
``hf:NAME[:SPLIT]``, with other column names mapped (`sources.load_records`); ``instruction``
and (for training) ``output`` are required strings, ``input`` is optional (absent = empty). ``python -m megacompress.gist prepare``
(`prepare_instruction_shard`) writes one shard ``PREFIX`` (one sequence per record: the
whole formatted record), ``PREFIX.gist.npy`` (int64 [N, 5]: gist_start, gist_end,
input_start, input_end, output_start per record) and ``PREFIX.meta.json`` (tokenizer
fingerprint for the builder's check, k, and the counts of records left out: missing or
non-string fields, empty outputs).

`InstructionDataset` (``data.kind: instruction``): one record per sample, padded to S
inputs. A record longer than S + 1 tokens loses the end of its input first, then the end
of its output; never the instruction, the gists or the output's first token. A record
that does not fit even so is left out; all three counts are reported once (a warning) when
the dataset is built. Samples: ``input_ids``, ``labels``, ``position_ids``, ``document_ids``
[S] and ``gist_start``, ``gist_end`` (scalars; ``collate`` makes them [B]).

Serving (`InstructionFormat` with ``max_seq_len``, `InstructionFormat.prompt`) follows the same
order: a prompt too long for ``max_seq_len`` and the new tokens loses the end of its input first,
then its new-token budget (at least one new token stays), and an instruction too long even for that
loses its end; never the gists or the heads. Nothing is left out: every record is answered.

With ``data.pack_records: true`` a sample holds as many whole records as fit its S slots
(next-fit in the shuffled order: a record of T tokens takes T - 1 slots, as alone): record j
is document j, its positions restart at 0, and ``gist_start`` / ``gist_end`` are [S]: each
slot's own record's span in slot coordinates (S, S on padding), which the gist masks read
per slot. Each record then computes exactly what it would alone, with less padding.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megacompress.errors import UserError
from megacompress.atomic import atomic_write, write_text_atomic
from megacompress.data.collate import TOKEN_BATCH_KEYS
from megacompress.data.indexed import IndexedDataset, IndexedDatasetWriter, best_dtype
from megacompress.data.packing import next_fit
from megacompress.data.registry import register_dataset_kind
from megacompress.data.shuffle import epoch_permutations
from megacompress.data.tokenizers import Tokenizer

INSTRUCTION_BATCH_KEYS = TOKEN_BATCH_KEYS | {"gist_start", "gist_end"}
OFFSETS_SUFFIX = ".gist.npy"
_SHUFFLE_STREAM = 3  # after shuffle.CHUNKS: an order of its own
IGNORE_INDEX = -100


class InstructionDataError(UserError, ValueError):
    """Unusable instruction data; the message names the file (and line) and the problem."""


def read_records(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON list or JSONL file (each an object); errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InstructionDataError(f"{path}: cannot read ({exc})") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InstructionDataError(f"{path}: invalid JSON ({exc})") from None
        numbered = list(enumerate(records, 1))
        where = "record"
    else:
        numbered, where = [], "line"
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((line_no, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise InstructionDataError(f"{path}:{line_no}: invalid JSON ({exc})") from None
    for n, record in numbered:
        if not isinstance(record, dict):
            raise InstructionDataError(f"{path}: {where} {n} is not an object")
    return [record for _, record in numbered]


def record_problem(record: dict, need_output: bool) -> str | None:
    """Why a record cannot be used (a count name), or None."""
    fields = ("instruction", "output") if need_output else ("instruction",)
    for name in fields:
        if name not in record:
            return f"missing_{name}"
    for name in (*fields, "input"):
        if name in record and not isinstance(record[name], str):
            return f"non_string_{name}"
    if need_output and not record["output"].strip():
        return "empty_output"
    return None


@dataclass(frozen=True)
class FormattedRecord:
    tokens: list[int]
    gist_start: int
    gist_end: int
    input_start: int
    input_end: int
    output_start: int  # == len(tokens) for a prompt without output


class InstructionFormat:
    """The gist format (docs/gist.md, "Format") for one tokenizer and k; see the module docstring."""

    def __init__(self, tokenizer: Tokenizer, k: int, max_seq_len: int | None = None):
        if k < 1:
            raise ValueError(f"the gist format needs k >= 1 gist tokens, got {k}")
        self.tokenizer, self.k = tokenizer, k
        self.gist_id = tokenizer.special_id("gist")
        bos = getattr(tokenizer, "bos", None)
        self.bos = [bos] if bos is not None and getattr(tokenizer, "add_bos", False) else []
        self.input_head = tokenizer.encode_continuation("\nInput:")
        self.output_head = tokenizer.encode_continuation("\nOutput:")
        # Serving (``max_seq_len`` given): the longest prefix that leaves room for both heads and
        # one new token; a longer instruction loses its end (`prefix`), never its gists.
        self.max_seq_len = max_seq_len
        self.max_prefix = None
        if max_seq_len is not None:
            self.max_prefix = max_seq_len - len(self.input_head) - len(self.output_head) - 1
            if self.max_prefix < len(self.bos) + k + 1:
                raise InstructionDataError(f"max_seq_len {max_seq_len} leaves no room for an instruction, its {k} "
                                           "gists, the input and output heads and one new token")

    def instruction_cut(self, instruction: str) -> int:
        """Instruction tokens `prefix` drops to fit ``max_seq_len`` (0 without one)."""
        if self.max_prefix is None:
            return 0
        n = len(self.bos) + len(self.tokenizer.encode(f"Instruction: {instruction}\n")) + self.k
        return max(0, n - self.max_prefix)

    def prefix(self, instruction: str) -> list[int]:
        """bos + instruction + gists: the part that gist caching compresses. With ``max_seq_len``
        the end of an instruction too long to serve is cut (`instruction_cut`), its gists kept."""
        body = self.tokenizer.encode(f"Instruction: {instruction}\n")
        if self.max_prefix is not None:
            body = body[:self.max_prefix - len(self.bos) - self.k]
        return self.bos + body + [self.gist_id] * self.k

    def prompt(self, instruction: str, input: str, max_new_tokens: int) -> tuple[FormattedRecord, int, dict]:
        """The prompt that generation continues, fitted to ``max_seq_len`` (set at construction) with
        ``max_new_tokens`` new tokens: (record, new tokens it may generate, what was cut).

        The rule (docs/gist.md, "Instruction data sources, long records, several evaluation
        splits"): first the end of the input is cut, as far as needed, down to no input; if the
        prompt still leaves fewer than ``max_new_tokens`` positions, that record generates only as
        many as are left (at least one); an instruction too long for even that loses its end
        (`prefix`). The gists, both heads and the output's start are never cut. ``cuts``:
        ``input_tokens``, ``instruction_tokens`` cut and ``new_tokens`` (the new-token budget lost).
        """
        if self.max_seq_len is None:
            raise ValueError("InstructionFormat.prompt needs the model's max_seq_len")
        rec = self.format(instruction, input)
        budget = self.max_seq_len - max_new_tokens
        cut_input = min(max(0, len(rec.tokens) - budget), rec.input_end - rec.input_start)
        tokens = rec.tokens[:rec.input_end - cut_input] + rec.tokens[rec.input_end:]
        fitted = FormattedRecord(tokens, rec.gist_start, rec.gist_end, rec.input_start,
                                 rec.input_end - cut_input, len(tokens))
        new_tokens = min(max_new_tokens, self.max_seq_len - len(tokens))
        return fitted, new_tokens, {"input_tokens": cut_input, "instruction_tokens": self.instruction_cut(instruction),
                                    "new_tokens": max_new_tokens - new_tokens}

    def format(self, instruction: str, input: str = "", output: str | None = None) -> FormattedRecord:
        """The whole record (``output=None``: the prompt that generation continues)."""
        prefix = self.prefix(instruction)
        input_ids = self.tokenizer.encode_continuation(" " + input) if input else []
        out = [] if output is None else self.tokenizer.encode_continuation(" " + output) + [self.tokenizer.eod]
        tokens = prefix + self.input_head + input_ids + self.output_head + out
        input_start = len(prefix) + len(self.input_head)
        return FormattedRecord(tokens, len(prefix) - self.k, len(prefix), input_start,
                               input_start + len(input_ids), len(tokens) - len(out))


def prepare_instruction_shard(records_path: str, tokenizer: Tokenizer, k: int, prefix: str,
                              fields: dict[str, str] | None = None) -> dict:
    """Write the ``instruction`` shard of ``records_path`` (any source of `sources.load_records`,
    ``fields`` its column mapping; module docstring); returns the meta."""
    from megacompress.methods.gist.sources import load_records

    fmt = InstructionFormat(tokenizer, k)
    records = load_records(records_path, fields, need_output=True)
    skipped: Counter = Counter()
    offsets = []
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    writer = IndexedDatasetWriter(prefix, best_dtype(tokenizer.vocab_size))
    for record in records:
        problem = record_problem(record, need_output=True)
        if problem:
            skipped[problem] += 1
            continue
        rec = fmt.format(record["instruction"], record.get("input", ""), record["output"])
        writer.add_document(np.asarray(rec.tokens, dtype=np.int64))
        offsets.append([rec.gist_start, rec.gist_end, rec.input_start, rec.input_end, rec.output_start])
    if not offsets:
        raise InstructionDataError(f"{records_path}: no usable record (left out: {dict(skipped)})")
    writer.finalize()
    def save_offsets(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
            np.save(f, np.asarray(offsets, dtype=np.int64))

    atomic_write(prefix + OFFSETS_SUFFIX, save_offsets)
    meta = {"tokenizer": {"name": tokenizer.name, "fingerprint": tokenizer.fingerprint(),
                          "vocab_size": tokenizer.vocab_size,
                          "model": os.path.basename(getattr(tokenizer, "model_path", "") or "") or None},
            "flags": {"append_eod": True},
            "instruction": {"k": k, "source": os.path.basename(str(records_path).rstrip("/")), "records": len(records),
                            "kept": len(offsets), "skipped": dict(skipped)}}
    write_text_atomic(prefix + ".meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def fit_record(offsets: np.ndarray, length: int, limit: int) -> tuple[int, int] | None:
    """(input tokens to drop, output tokens to drop) so that ``length`` tokens fit ``limit``; None if impossible."""
    _, _, input_start, input_end, output_start = (int(v) for v in offsets)
    excess = max(0, length - limit)
    from_input = min(excess, input_end - input_start)
    from_output = excess - from_input
    if output_start - from_input >= limit:  # not even the first output token would be a target
        return None
    return from_input, from_output


class InstructionDataset:
    """Map-style dataset of formatted records (``data.kind: instruction``)."""

    batch_keys = INSTRUCTION_BATCH_KEYS

    def __init__(self, prefix: str, seq_length: int, num_samples: int, document_range: tuple[int, int],
                 pad_id: int, seed: int = 1234, shuffle: bool = True, pack: bool = False, k: int | None = None):
        self.prefix, self.shard = prefix, IndexedDataset(prefix)
        # Model config fields the records were formatted for (the trainer refuses a model that differs).
        self.made_for_model = {} if k is None else {"gist_tokens": k}
        path = prefix + OFFSETS_SUFFIX
        try:
            self.offsets = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InstructionDataError(f"{path}: cannot read the gist offsets ({exc})") from None
        if self.offsets.shape != (len(self.shard), 5):
            raise InstructionDataError(f"{path}: offsets of shape {self.offsets.shape}, the shard has "
                                       f"{len(self.shard)} records (expected [{len(self.shard)}, 5])")
        self.seq_length, self.pad_id = seq_length, pad_id
        counts: Counter = Counter()
        kept = []
        for i in range(*document_range):
            fit = fit_record(self.offsets[i], int(self.shard.sequence_lengths[i]), seq_length + 1)
            if fit is None:
                counts["too_long"] += 1
                continue
            kept.append(i)
            counts["input_truncated"] += fit[0] > 0
            counts["output_truncated"] += fit[1] > 0
        if not kept:
            raise InstructionDataError(f"{prefix}: no record of documents {document_range} fits seq_length "
                                       f"{seq_length} ({counts['too_long']} too long)")
        self.records = np.asarray(kept, dtype=np.int64)
        self.counts = dict(counts)
        if counts["too_long"] or counts["input_truncated"] or counts["output_truncated"]:
            warnings.warn(f"{prefix}: at seq_length {seq_length}, of {len(range(*document_range))} records "
                          f"{counts['too_long']} are too long and left out, {counts['input_truncated']} lose the "
                          f"end of their input, {counts['output_truncated']} the end of their output", stacklevel=2)
        self.rows = None  # packed: record indices per sample
        if pack:
            slots = np.minimum(self.shard.sequence_lengths[self.records].astype(np.int64), seq_length + 1) - 1
            self.rows = _pack(slots, seq_length, num_samples, seed, shuffle)
        else:
            epochs = math.ceil(num_samples / len(kept))
            self.order = epoch_permutations(seed, _SHUFFLE_STREAM, [len(kept)] * epochs, shuffle)[:num_samples]

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.order)

    def _fitted(self, record: int) -> tuple[np.ndarray, int, int, int]:
        """(tokens cut to fit S + 1, gist_start, gist_end, output_start) of a shard record."""
        tokens = np.asarray(self.shard[record], dtype=np.int64)
        gist_start, gist_end, _, input_end, output_start = (int(v) for v in self.offsets[record])
        drop_input, _ = fit_record(self.offsets[record], len(tokens), self.seq_length + 1)
        tokens = np.concatenate([tokens[:input_end - drop_input], tokens[input_end:]])[:self.seq_length + 1]
        return tokens, gist_start, gist_end, output_start - drop_input

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        s = self.seq_length
        records = self.rows[i] if self.rows is not None else [self.order[i]]
        input_ids = np.full(s, self.pad_id, dtype=np.int64)
        labels = np.full(s, IGNORE_INDEX, dtype=np.int64)
        document_ids = np.full(s, -1, dtype=np.int64)
        position_ids = np.zeros(s, dtype=np.int64)
        gist_start, gist_end = np.full(s, s, dtype=np.int64), np.full(s, s, dtype=np.int64)
        at = 0
        for j, index in enumerate(records):
            tokens, start, end, output_start = self._fitted(int(self.records[index]))
            n = len(tokens) - 1
            span = slice(at, at + n)
            input_ids[span], document_ids[span], position_ids[span] = tokens[:-1], j, np.arange(n)
            labels[at + output_start - 1:at + n] = tokens[output_start:]
            gist_start[span], gist_end[span] = at + start, at + end
            at += n
        if self.rows is None:  # one record: its span as scalars
            gist_start, gist_end = gist_start[0], gist_end[0]
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                "document_ids": document_ids, "gist_start": gist_start, "gist_end": gist_end}


def _pack(slots: np.ndarray, seq_length: int, num_samples: int, seed: int, shuffle: bool) -> list[list[int]]:
    """``num_samples`` rows of record indices (into ``slots``, the slots each record takes): next-fit
    in epoch order (the permutations of the unpacked order), at most ``seq_length`` slots a row.
    Epochs are added until the last row is complete (a row holds one record or many)."""
    epochs = math.ceil((num_samples + 1) / len(slots))
    while True:
        order = epoch_permutations(seed, _SHUFFLE_STREAM, [len(slots)] * epochs, shuffle)
        rows = next_fit(slots[order], seq_length)
        if len(rows) > num_samples:  # row num_samples started, so every row before it is complete
            return [order[row].tolist() for row in rows[:num_samples]]
        epochs *= 2


def build_instruction(prefix, meta, config, seq_length, num_samples, document_range, tokenizer, cache_dir):
    """The ``instruction`` kind's builder (`megacompress.data.registry`)."""
    if "instruction" not in meta:
        raise InstructionDataError(f"{prefix}.meta.json: not an instruction shard (write one with "
                                   "`python -m megacompress.gist prepare`)")
    skipped = meta["instruction"].get("skipped") or {}
    if skipped:
        warnings.warn(f"{prefix}: {sum(skipped.values())} of {meta['instruction']['records']} records were left "
                      f"out when the shard was prepared: {skipped}", stacklevel=2)
    return InstructionDataset(prefix, seq_length, num_samples, document_range, tokenizer.special_id("pad"),
                              seed=config.seed, shuffle=config.shuffle, pack=config.pack_records,
                              k=meta["instruction"]["k"])


register_dataset_kind("instruction", build_instruction, INSTRUCTION_BATCH_KEYS)
