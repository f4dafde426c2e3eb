"""GPTHF generation: fast (two per-row KV caches) and the public code's algorithm (no cache).

Fast generation keeps, per row,

* an **encoder cache** (`GPTHF.encoder` layers) holding only the row's current sentence:
  a new token attends to the tokens of its sentence so far; the cache is reset right after
  the row's EOS went through (the EOS belongs to the sentence it ends);
* a **body cache** (`GPTHF.body` layers) holding one entry per finished sentence: a new
  token's body query sees the cached EOS entries and itself; only rows whose token is an
  EOS commit it (`KVCache` ``kv_commit``).

These are exactly the keys the training masks let a token see, at the same global RoPE
positions, so every step's logits equal a teacher-forced forward over the sequence
(tests/test_gpthf_generation.py). Prefill: the encoder runs once over each prompt's
finished sentences (no cache: nothing of them is needed later but their EOS outputs),
the body only over those EOS outputs (filling the body cache), then the current
sentence goes through the encoder with its cache and the body runs for its last token
only. A prompt that ends exactly at an EOS treats that last sentence as current, so it
is committed and the encoder cache starts the next sentence empty.

Rows are in different states at every step (mid-sentence, just finished, stopped); the
caches' per-row lengths and commits handle that. Cache slots grow by doubling (so the
memory held follows what is used) and `GenerationOutput.kv_cache_bytes` reports the valid
entries at the end.

`generate_public_algorithm` re-implements what davidgu0309/gpthf's "fast" generation
computes, with the training masks: each step re-encodes the whole current sentence and
reruns the body over all sentence embeddings plus the new token, nothing cached. It is
exact too, and is the comparator that shows where the published speed-up comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from megacompress.data.tokenizers import encode_pieces
from megacompress.generation.fast import register_generator
from megacompress.generation.generate import GenerationOutput, check_lengths, decode_loop, left_pad
from megacompress.methods.gpthf.model import BODY, ENCODER
from megacompress.models.kv_cache import KVCache

# Slots allocated beyond the prompt's needs; caches double when they fill up.
CACHE_MARGIN = 32


def encode_prompt(tokenizer, text: str, eos_id: int, splitter=None, *, ends_sentence: bool = False) -> list[int]:
    """Token ids of a prompt as GPTHF was trained on them: EOS after every sentence
    (`megacompress.data.sentences` splitting, like ``preprocess --split-sentences``) except the
    last piece, which is taken as unfinished unless ``ends_sentence``."""
    from megacompress.data.sentences import split_sentences  # NLTK import: only when needed

    ids: list[int] = []
    pieces = encode_pieces(tokenizer, split_sentences(text, splitter))
    for i, piece in enumerate(pieces):
        ids += piece
        if i < len(pieces) - 1 or ends_sentence:
            ids.append(eos_id)
    return ids


def split_prompt(prompt: list[int], eos_id: int) -> int:
    """Index after the last EOS before the prompt's final token: ``prompt[:k]`` are finished
    sentences, ``prompt[k:]`` (never empty) the current one."""
    ends = [i for i, t in enumerate(prompt[:-1]) if t == eos_id]
    return ends[-1] + 1 if ends else 0


def right_pad(pieces: list[list[int]], starts: list[int], pad_id: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, position_ids, document_ids) [B, max(len, 1)]: row b's tokens at positions
    ``starts[b]..``, then padding (document -1)."""
    width = max(1, max(len(p) for p in pieces))
    ids = torch.full((len(pieces), width), pad_id, dtype=torch.long)
    documents = torch.full_like(ids, -1)
    for row, piece in enumerate(pieces):
        ids[row, :len(piece)] = torch.tensor(piece, dtype=torch.long)
        documents[row, :len(piece)] = 0
    positions = torch.tensor(starts)[:, None] + torch.arange(width)
    return ids.to(device), positions.to(device), documents.to(device)


@dataclass
class Sentences:
    """Encoder outputs at the EOS of each row's finished sentences, left-aligned."""

    embeddings: torch.Tensor  # [B, N, H]
    positions: torch.Tensor   # [B, N] global token positions of the EOS
    counts: torch.Tensor      # [B] sentences per row (entries past it are padding)


def encode_finished(model: nn.Module, pieces: list[list[int]], eos_id: int, pad_id: int) -> Sentences:
    """Run the encoder over each row's finished sentences (``pieces``, starting at position 0)."""
    device = model.output_weight.device
    ids, positions, documents = right_pad(pieces, [0] * len(pieces), pad_id, device)
    eos = (ids == eos_id) & (documents >= 0)
    counts = eos.sum(dim=1)
    width = int(counts.max())
    hidden = model.embed.weight.new_zeros(len(pieces), width, model.config.hidden_size)
    eos_positions = torch.zeros(len(pieces), width, dtype=torch.long, device=device)
    if width:
        h = model.run_stack(ENCODER, model.embed(ids), positions, documents, eos)
        rows, cols = eos.nonzero(as_tuple=True)
        slots = (eos.cumsum(dim=1) - 1)[rows, cols]
        hidden[rows, slots] = h[rows, cols]
        eos_positions[rows, slots] = positions[rows, cols]
    return Sentences(hidden, eos_positions, counts)


def _reload(source: KVCache, target: KVCache, lengths: torch.Tensor) -> None:
    """``target``'s rows start from the first ``lengths[b]`` entries of ``source``'s rows."""
    n = int(lengths.max())
    if n == 0:
        target.reset()
        return
    # Copies, because source and target may be the same cache (trimming in place).
    target.load([k[:, :, :n].clone() for k in source.k], [v[:, :, :n].clone() for v in source.v], lengths,
                document_ids=source.document_ids[:, :n].clone())


class SentenceCaches:
    """The encoder and body KV caches of a batch of rows (module docstring)."""

    def __init__(self, model: nn.Module, batch_size: int, capacity: int):
        self.model = model
        self.caches = {part: model.new_stack_cache(part, batch_size, capacity) for part in (ENCODER, BODY)}

    def nbytes(self) -> int:
        return sum(cache.nbytes() for cache in self.caches.values())

    def _with_room(self, part: str, new: int) -> KVCache:
        cache = self.caches[part]
        lengths = cache.lengths
        need = int(lengths.max()) + new
        if need > cache.max_len:
            grown = self.model.new_stack_cache(part, cache.batch_size, max(need, 2 * cache.max_len))
            _reload(cache, grown, lengths)
            self.caches[part] = cache = grown
        return cache

    def _run(self, part: str, x: torch.Tensor, positions: torch.Tensor, counts: torch.Tensor,
             commit: torch.Tensor) -> torch.Tensor:
        """``counts[b]`` new tokens of each row (right-padded in x [B, Q, H]) through one stack;
        the ``commit`` rows keep exactly their real ones."""
        cache = self._with_room(part, x.shape[1])
        lengths = cache.lengths
        documents = torch.where(torch.arange(x.shape[1], device=x.device) < counts[:, None].to(x.device), 0, -1)
        out = self.model.run_stack(part, x, positions, documents, kv_cache=cache, kv_commit=commit)
        if x.shape[1] > 1:  # a committed row keeps Q slots; cut it back to its real tokens
            _reload(cache, cache, lengths + torch.where(commit.cpu(), counts.cpu(), 0))
        return out

    def add_sentences(self, sentences: Sentences) -> None:
        """Body prefill: every row's finished-sentence embeddings enter the body cache."""
        if sentences.embeddings.shape[1]:
            self._run(BODY, sentences.embeddings, sentences.positions, sentences.counts, sentences.counts > 0)

    def feed(self, tokens: torch.Tensor, positions: torch.Tensor, counts: torch.Tensor, eos_id: int) -> torch.Tensor:
        """Row b's next ``counts[b]`` tokens (``tokens`` [B, Q] right-padded; only the last may be an EOS)
        -> logits after its last one, [B, Vp/tp] (rows with ``counts[b] == 0`` are ignored)."""
        model, rows = self.model, torch.arange(tokens.shape[0], device=tokens.device)
        live = counts.to(tokens.device) > 0
        x = self._run(ENCODER, model.embed(tokens), positions, counts, live)
        last = (counts.to(tokens.device) - 1).clamp(min=0)
        ends = live & (tokens[rows, last] == eos_id)
        x = self._run(BODY, x[rows, last][:, None], positions[rows, last][:, None], live.long(), ends)
        self.caches[ENCODER].reset(ends.cpu())  # the next token starts a new sentence
        return model.lm_logits(x)[:, -1]


def _check_gpthf(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, eos_id: int) -> None:
    if model.config.architecture != "gpthf":
        raise ValueError(f"GPTHF generation needs a GPTHF model, got architecture {model.config.architecture!r}")
    if not 0 <= eos_id < model.config.vocab_size:
        raise ValueError(f"eos_id {eos_id} is not in the model's vocabulary of {model.config.vocab_size}; "
                         "GPTHF needs a tokenizer with the <|endofsentence|> token")
    check_lengths(model.config, prompts, max_new_tokens)


def add_arguments(parser) -> None:
    group = parser.add_argument_group("GPTHF models (architecture gpthf)")
    group.add_argument("--sentence-model", default=None,
                       help="Punkt model splitting the prompt into sentences (e.g. the train shard's "
                            ".sentences.json); default: NLTK's English model")
    group.add_argument("--prompt-ends-sentence", action="store_true",
                       help="the prompt's last sentence is finished: an EOS follows it, and generation starts "
                            "a new sentence (default: the last sentence is continued)")


def encode_prompts(tokenizer, texts: list[str], args) -> tuple[list[list[int]], dict]:
    """Prompts as GPTHF was trained on them (`encode_prompt`) and the ``eos_id`` both modes need."""
    from megacompress.data.sentences import SentenceSplitter  # NLTK import: only for sentence models

    eos_id = tokenizer.special_id("eos")
    splitter = SentenceSplitter.load(args.sentence_model) if args.sentence_model else None
    prompts = [encode_prompt(tokenizer, t, eos_id, splitter, ends_sentence=args.prompt_ends_sentence) for t in texts]
    return prompts, {"eos_id": eos_id}


@register_generator("gpthf", add_arguments=add_arguments, encode_prompts=encode_prompts)
@torch.no_grad()
def generate_fast(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, *, eos_id: int,
                  eod_id: int | None = None, **options) -> GenerationOutput:
    """GPTHF generation with the sentence caches. ``options``: `generate.decode_loop`'s (sampling,
    return_logits, show_progress, forced_tokens)."""
    _check_gpthf(model, prompts, max_new_tokens, eos_id)
    pad_id = 0 if eod_id is None else eod_id
    device = model.output_weight.device
    splits = [split_prompt(p, eos_id) for p in prompts]
    sentences = encode_finished(model, [p[:k] for p, k in zip(prompts, splits)], eos_id, pad_id)
    current = [p[k:] for p, k in zip(prompts, splits)]
    capacity = max(sentences.embeddings.shape[1], max(map(len, current))) + CACHE_MARGIN
    caches = SentenceCaches(model, len(prompts), capacity)
    caches.add_sentences(sentences)
    ids, positions, _ = right_pad(current, splits, pad_id, device)
    logits = caches.feed(ids, positions, torch.tensor([len(c) for c in current]), eos_id)
    lengths = torch.tensor([len(p) for p in prompts], device=device)

    def step(token: torch.Tensor, index: int, finished: torch.Tensor) -> torch.Tensor:
        return caches.feed(token[:, None], (lengths + index)[:, None], (~finished).long(), eos_id)

    out = decode_loop(logits, step, max_new_tokens, model.config.vocab_size, eod_id=eod_id, **options)
    out.kv_cache_bytes = caches.nbytes()
    return out


def _left_pad_states(states: list[torch.Tensor], positions: list[torch.Tensor]):
    """Per-row [n_b, H] states and [n_b] positions -> left-padded x [B, M, H], positions, documents [B, M]."""
    width = max(s.shape[0] for s in states)
    x = states[0].new_zeros(len(states), width, states[0].shape[1])
    pos = torch.zeros(len(states), width, dtype=torch.long, device=x.device)
    documents = torch.full_like(pos, -1)
    for row, (s, p) in enumerate(zip(states, positions)):
        if len(s):
            x[row, -len(s):], pos[row, -len(s):], documents[row, -len(s):] = s, p, 0
    return x, pos, documents


@torch.no_grad()
def generate_public_algorithm(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, *, eos_id: int,
                              eod_id: int | None = None, **options) -> GenerationOutput:
    """The public code's uncached algorithm (module docstring), with the training masks; ``options`` as
    `generate_fast`'s."""
    _check_gpthf(model, prompts, max_new_tokens, eos_id)
    pad_id = 0 if eod_id is None else eod_id
    device = model.output_weight.device
    splits = [split_prompt(p, eos_id) for p in prompts]
    sentences = encode_finished(model, [p[:k] for p, k in zip(prompts, splits)], eos_id, pad_id)
    embeddings = [sentences.embeddings[b, :n] for b, n in enumerate(sentences.counts.tolist())]
    eos_positions = [sentences.positions[b, :n] for b, n in enumerate(sentences.counts.tolist())]
    current = [p[k:] for p, k in zip(prompts, splits)]
    starts = list(splits)

    def compute() -> torch.Tensor:
        ids, positions, documents = (t.to(device) for t in left_pad(current, pad_id))
        positions = positions + torch.tensor(starts, device=device)[:, None]
        h = model.run_stack(ENCODER, model.embed(ids), positions, documents, (ids == eos_id) & (documents >= 0))
        last, last_pos = h[:, -1], positions[:, -1]
        x, pos, docs = _left_pad_states([torch.cat([e, l[None]]) for e, l in zip(embeddings, last)],
                                        [torch.cat([p, q[None]]) for p, q in zip(eos_positions, last_pos)])
        # Every body key but the query itself is a sentence end.
        out = model.run_stack(BODY, x, pos, docs, docs >= 0)
        for row, c in enumerate(current):  # a finished sentence becomes an embedding
            if c[-1] == eos_id:
                embeddings[row] = torch.cat([embeddings[row], last[row][None]])
                eos_positions[row] = torch.cat([eos_positions[row], last_pos[row][None]])
                starts[row] += len(c)
                current[row] = []
        return model.lm_logits(out[:, -1:])[:, -1]

    def step(token: torch.Tensor, index: int, finished: torch.Tensor) -> torch.Tensor:
        for row in range(len(current)):
            if not finished[row] or not current[row]:
                current[row].append(int(token[row]))
        return compute()

    return decode_loop(compute(), step, max_new_tokens, model.config.vocab_size, eod_id=eod_id, **options)
