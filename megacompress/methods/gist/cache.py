"""Gist caches: the K/V of an instruction's gist tokens, computed once, stored, reused.

`compress` runs ``prefix = [bos] "Instruction: ...\\n" <GIST>*k`` (`InstructionFormat.prefix`)
for a batch of instructions (right-padded; up to the last gist the gist mask is plain
causal, so the prefix runs document-causal) and keeps, per row and layer, only the K/V
at the k gist positions: keys already rotated at their original positions
``prefix_len - k .. prefix_len - 1``. The input that follows continues at position
``prefix_len``, as if the instruction were still there (`gist_generate`).

On disk a cache is a directory (written as ``DIR.tmp-PID`` and renamed, so it is either
complete or absent; no pickles, safe to open from anywhere):

* ``gists.safetensors``: ``{key}.k`` and ``{key}.v`` of shape [layers, Hkv, k, D] per
  instruction (``key`` = sha256 of the instruction text, 32 hex digits);
* ``index.json``: ``format``, ``model`` (``model_hash`` = sha256 of the model's
  ``config.json`` + ``model.safetensors``, its path), ``k``, the tokenizer fingerprint,
  dtype, the ``digest`` (sha256) of ``gists.safetensors``, and per key the instruction and
  ``prefix_len``.

A cache may come from someone else: `GistCache` refuses one made by another model, for
another k, tokenizer or dtype, and checks every field of the index and the name, shape and
dtype of every tensor (and the tensor file's digest) before the first entry is used, naming
the file and the problem.
A cache holds the K/V of all heads, whatever the tensor-parallel size that made it or serves
it (`GistEntry.local_heads`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from megacompress.errors import UserError
from megacompress.atomic import atomic_write, write_text_atomic
from megacompress.methods.gist.data import InstructionFormat
from megacompress.generation.generate import length_batches
from megacompress.integrity import IntegrityError, check_digest, digest_file
from megacompress.models import pretrained
from megacompress.parallel import sharding, state

FORMAT = 2  # 2: the index records the tensor file's digest
INDEX, TENSORS = "index.json", "gists.safetensors"
_KEY = re.compile(r"[0-9a-f]{32}")
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


class GistCacheError(UserError, ValueError):
    """A cache that cannot be used here; the message names the cache and the reason."""


@dataclass
class GistEntry:
    keys: torch.Tensor    # [layers, Hkv, k, D]
    values: torch.Tensor  # [layers, Hkv, k, D]
    prefix_len: int       # position after the last gist: where the input continues

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def local_heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) of this TP rank's KV heads, [layers, Hkv/tp, k, D]."""
        if state.get_tensor_parallel_world_size() == 1:
            return self.keys, self.values
        return sharding.shard(self.keys, 1), sharding.shard(self.values, 1)


def instruction_key(instruction: str) -> str:
    return hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:32]


def model_identity(model_dir: str | os.PathLike) -> str:
    """sha256 of a model directory's config.json and weights (what a cache was computed by)."""
    h = hashlib.sha256()
    for name in (pretrained.CONFIG_NAME, pretrained.WEIGHTS_NAME):
        with open(Path(model_dir) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def check_prefix(prefix: list[int], fmt: InstructionFormat, what: str) -> None:
    """A prompt to compress must end with exactly k gist tokens and have no other gist."""
    k = fmt.k
    if prefix[-k:] != [fmt.gist_id] * k or fmt.gist_id in prefix[:-k]:
        raise GistCacheError(f"{what}: the prompt does not end with its {k} gist token(s) ({fmt.gist_id}); "
                             "only gist prompts can be compressed")


@torch.no_grad()
def compress(model, fmt: InstructionFormat, instructions: list[str], batch_size: int = 8) -> list[GistEntry]:
    """Gist K/V of each instruction (model in eval mode; all KV heads at any TP size)."""
    if model.config.gist_variant != "gist":  # the controls' answers need more than (or none of) the gists
        raise GistCacheError(f"a {model.config.gist_variant} model has no gist cache: its answers attend to "
                             f"{'the whole instruction' if model.config.gist_variant == 'pos_control' else 'no gist'}; "
                             "answer over the full prompt (generate --no-cache)")
    if model.config.gist_tokens != fmt.k:
        raise GistCacheError(f"the model was made for k={model.config.gist_tokens} gist tokens, the format has "
                             f"k={fmt.k}")
    prefixes = [fmt.prefix(text) for text in instructions]
    for text, prefix in zip(instructions, prefixes):
        check_prefix(prefix, fmt, f"instruction {text[:60]!r}")
        if len(prefix) >= model.config.max_seq_len:
            raise GistCacheError(f"instruction {text[:60]!r}: {len(prefix)} tokens with its gists, the model's "
                                 f"max_seq_len is {model.config.max_seq_len}")
    entries: list[GistEntry | None] = [None] * len(instructions)
    device = model.output_weight.device
    for rows in length_batches([len(p) for p in prefixes], batch_size):
        batch = [prefixes[i] for i in rows]
        longest = max(map(len, batch))
        ids = torch.full((len(batch), longest), fmt.tokenizer.special_id("pad"), dtype=torch.long)
        docs = torch.full_like(ids, -1)
        for row, prefix in enumerate(batch):
            ids[row, :len(prefix)] = torch.tensor(prefix)
            docs[row, :len(prefix)] = 0
        positions = torch.arange(longest).expand_as(ids)
        cache = model.new_kv_cache(len(batch), longest)
        # Only the K/V are kept: the LM head runs at one position, not at every token.
        model(ids.to(device), positions.to(device), docs.to(device), kv_cache=cache,
              logits_index=torch.zeros(len(batch), dtype=torch.long))
        spans = [slice(len(prefix) - fmt.k, len(prefix)) for prefix in batch]
        # [rows, layers, Hkv/tp, k, D]; this rank's KV heads -> all of them, one gather per batch,
        # so a cache does not depend on the TP size.
        keys, values = (sharding.gather(torch.stack([torch.stack([t[row, :, span] for t in part])
                                                     for row, span in enumerate(spans)]), 2).cpu()
                        for part in (cache.k, cache.v))
        for row, (index, prefix) in enumerate(zip(rows, batch)):
            entries[index] = GistEntry(keys[row], values[row], len(prefix))
    return entries


def save_cache(path: str | os.PathLike, instructions: list[str], entries: list[GistEntry], *, model_hash: str,
               model_dir: str, k: int, tokenizer_fingerprint: str) -> Path:
    """Write a cache directory atomically (module docstring)."""
    path = Path(path)
    tensors, index = {}, {}
    for text, entry in zip(instructions, entries):
        key = instruction_key(text)
        tensors[f"{key}.k"], tensors[f"{key}.v"] = entry.keys.contiguous(), entry.values.contiguous()
        index[key] = {"instruction": text, "prefix_len": entry.prefix_len}
    meta = {"format": FORMAT, "model": {"model_hash": model_hash, "path": str(model_dir)}, "k": k,
            "tokenizer_fingerprint": tokenizer_fingerprint,
            "dtype": str(entries[0].keys.dtype).removeprefix("torch.") if entries else None, "entries": index}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # atomic_write for the permissions a plain open() gives (the directory rename is what is atomic)
    atomic_write(tmp / TENSORS, lambda t: save_file(tensors, t, metadata={"format": "megacompress-gist-cache"}))
    meta["digest"] = digest_file(tmp / TENSORS)
    write_text_atomic(tmp / INDEX, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


class GistCache:
    """A stored cache, checked against the model that will use it (module docstring)."""

    def __init__(self, path: str | os.PathLike, model, *, model_hash: str, tokenizer_fingerprint: str):
        self.path = Path(path)
        index = self.path / INDEX
        try:
            self.meta = json.loads(index.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GistCacheError(f"{self.path}: not a gist cache ({INDEX} missing)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GistCacheError(f"{index}: not valid JSON ({exc})") from None
        self._check_index(model, model_hash, tokenizer_fingerprint)
        self._file = self._open_tensors(model)

    def _check_index(self, model, model_hash: str, tokenizer_fingerprint: str) -> None:
        index, meta, config = self.path / INDEX, self.meta, model.config
        if not isinstance(meta, dict):
            raise GistCacheError(f"{index}: not a JSON object")
        if meta.get("format") != FORMAT:
            raise GistCacheError(f"{self.path}: cache format {meta.get('format')!r}, this code reads {FORMAT} "
                                 "(compute it again with `python -m megacompress.gist compress`)")
        made_by = meta.get("model")
        if not isinstance(made_by, dict) or not isinstance(made_by.get("model_hash"), str):
            raise GistCacheError(f"{index}: no model.model_hash (the model the cache was made by)")
        if made_by["model_hash"] != model_hash:
            raise GistCacheError(f"{self.path}: made by another model ({made_by.get('path')}, hash "
                                 f"{made_by['model_hash'][:12]}); this model's hash is {model_hash[:12]}")
        k = meta.get("k")
        if type(k) is not int:
            raise GistCacheError(f"{index}: k {k!r} is not a number of gist tokens")
        if k != config.gist_tokens:
            raise GistCacheError(f"{self.path}: made with k={k} gist tokens, this model uses k={config.gist_tokens}")
        recorded = meta.get("tokenizer_fingerprint")
        if recorded is not None and recorded != tokenizer_fingerprint:
            raise GistCacheError(f"{self.path}: made with another tokenizer (fingerprint {str(recorded)[:12]}); "
                                 f"this one's is {tokenizer_fingerprint[:12]}")
        entries = meta.get("entries")
        if not isinstance(entries, dict):
            raise GistCacheError(f"{index}: no entries object")
        dtype = model.output_weight.dtype
        if meta.get("dtype") != str(dtype).removeprefix("torch.") and entries:
            raise GistCacheError(f"{index}: dtype {meta.get('dtype')!r}, this model computes in "
                                 f"{str(dtype).removeprefix('torch.')}")
        if not isinstance(meta.get("digest"), str):
            raise GistCacheError(f"{index}: no digest of {TENSORS}")
        for key, entry in entries.items():
            if not _KEY.fullmatch(key):
                raise GistCacheError(f"{index}: entry {key[:60]!r} is not a 32-hex-digit instruction key")
            if not isinstance(entry, dict) or not isinstance(entry.get("instruction"), str):
                raise GistCacheError(f"{index}: entry {key} has no instruction text")
            if instruction_key(entry["instruction"]) != key:
                raise GistCacheError(f"{index}: entry {key} holds an instruction whose key is "
                                     f"{instruction_key(entry['instruction'])}")
            prefix_len = entry.get("prefix_len")
            if type(prefix_len) is not int or not k < prefix_len < config.max_seq_len:
                raise GistCacheError(f"{index}: entry {key}: prefix_len {prefix_len!r} must be a whole number of "
                                     f"tokens above k={k} and below the model's max_seq_len {config.max_seq_len}")

    def _open_tensors(self, model):
        """``gists.safetensors``, opened after its digest, names, shapes and dtypes are checked."""
        path = self.path / TENSORS
        try:
            check_digest(path, self.meta["digest"])
            tensors = safe_open(str(path), framework="pt")
        except FileNotFoundError:
            raise GistCacheError(f"{path}: missing") from None
        except (IntegrityError, SafetensorError) as exc:
            raise GistCacheError(f"{path}: unusable ({exc})") from None
        expected = {f"{key}.{side}" for key in self.meta["entries"] for side in "kv"}
        names = set(tensors.keys())
        if names != expected:
            raise GistCacheError(f"{path}: tensors do not match {INDEX}: missing {sorted(expected - names)[:4]}, "
                                 f"unexpected {sorted(names - expected)[:4]}")
        config = model.config
        shape = [config.num_layers, config.num_kv_heads, config.gist_tokens, config.head_dim]
        dtype = _SAFETENSORS_DTYPES.get(model.output_weight.dtype)
        for name in sorted(names):
            found = tensors.get_slice(name)
            if found.get_shape() != shape or found.get_dtype() != dtype:
                raise GistCacheError(f"{path}: {name} is {found.get_dtype()} {found.get_shape()}, this model needs "
                                     f"{dtype} {shape} ([layers, kv heads, k, head_dim])")
        return tensors

    def __contains__(self, instruction: str) -> bool:
        return instruction_key(instruction) in self.meta["entries"]

    def __len__(self) -> int:
        return len(self.meta["entries"])

    def get(self, instruction: str) -> GistEntry:
        key = instruction_key(instruction)
        if key not in self.meta["entries"]:
            raise GistCacheError(f"{self.path}: instruction {instruction[:60]!r} is not in the cache "
                                 "(run `python -m megacompress.gist compress` on it)")
        return GistEntry(self._file.get_tensor(f"{key}.k"), self._file.get_tensor(f"{key}.v"),
                         self.meta["entries"][key]["prefix_len"])
