"""``python -m megacompress.methods.equal_info.evaluate``: bits per byte of the original text (docs/equal_info.md, "Bits per byte").

bits/byte = (sum of the model's NLL, in nats, over every token of the documents and their
end-of-document token) / ln 2 / (UTF-8 bytes of the original documents), so a bytes
model, a SentencePiece / GPT-2 model and a bitstream (EqualInfo, AC, GZip) model are
compared on the same text. The original bytes come from the bitstream sidecar, or by
decoding the tokens with the shard's tokenizer (lossless tokenizers only).

Each document is scored as the model sees it in training: ``[eod] + tokens + [eod]``,
inputs and targets shifted by one, cut into blocks of ``max_seq_len`` predictions, each
block a fresh context (slightly pessimistic for documents longer than one block).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch

from megacompress import cli
from megacompress.methods.equal_info.codec import CodecError
from megacompress.methods.equal_info.shards import document_info
from megacompress.data.builder import read_shard_meta
from megacompress.data.indexed import IndexedDataset
from megacompress.data.tokenizers import build_tokenizer
from megacompress.integrity import resolve_inside
from megacompress.models.registry import load_pretrained


def shard_tokenizer(prefix: str, tokenizer_model: str | None = None):
    """The tokenizer a shard was made with (from its meta.json)."""
    meta = read_shard_meta(prefix)
    if meta is None:
        raise CodecError(f"{prefix}.meta.json: missing; evaluation needs to know the shard's tokenizer")
    name = meta["tokenizer"]["name"]
    if name == "bitstream":
        return build_tokenizer("bitstream", f"{prefix}.meta.json"), meta
    model = tokenizer_model
    recorded = meta["tokenizer"].get("model")
    if model is None and recorded and name in ("sentencepiece", "hf"):
        # preprocess records the model's file name only: it is found beside the shard, nowhere else
        model = str(resolve_inside(os.path.dirname(os.path.abspath(prefix)), recorded, source=f"{prefix}.meta.json"))
    return build_tokenizer(name, model if name in ("sentencepiece", "hf") else None), meta


@torch.no_grad()
def bits_per_byte(model, prefix: str, tokenizer_model: str | None = None, max_documents: int | None = None) -> dict:
    tokenizer, meta = shard_tokenizer(prefix, tokenizer_model)
    if tokenizer.fingerprint() != meta["tokenizer"]["fingerprint"]:
        raise CodecError(f"{prefix}.meta.json: tokenizer fingerprint differs from {tokenizer.name}'s")
    shard = IndexedDataset(prefix)
    n = len(shard) if max_documents is None else min(len(shard), max_documents)
    eod = tokenizer.eod
    bitstream = tokenizer.name == "bitstream"
    lengths = document_info(prefix)[:, 0] if bitstream else None
    seq = model.config.max_seq_len
    nll, tokens_scored, total_bytes = 0.0, 0, 0
    model.eval()
    for d in range(n):
        doc = np.asarray(shard[d], np.int64)
        if not bitstream and len(doc) and doc[-1] == eod:
            doc = doc[:-1]
        if bitstream:
            total_bytes += int(lengths[d])
        else:
            total_bytes += len(tokenizer.decode(doc.tolist()).encode("utf-8"))
        full = torch.tensor(np.concatenate([[eod], doc, [eod]]))
        for start in range(0, len(full) - 1, seq):
            inputs = full[start:start + seq][None]
            labels = full[start + 1:start + 1 + seq][None]
            inputs = inputs[:, :labels.shape[1]]
            out = model(inputs, labels=labels)
            nll += float(out.loss_sum)
            tokens_scored += int(out.num_labels)
    return {"documents": n, "bytes": total_bytes, "tokens": tokens_scored, "nll_nats": nll,
            "bits_per_byte": nll / math.log(2) / max(1, total_bytes),
            "bytes_per_token": total_bytes / max(1, tokens_scored - n), "tokenizer": tokenizer.name}


def main(argv: list[str] | None = None) -> dict:
    p = cli.parser("megacompress.methods.equal_info.evaluate", __doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="exported model directory (save_pretrained / export)")
    p.add_argument("--data-prefix", required=True, help="shard prefix: bitstream, or token shard with meta.json")
    p.add_argument("--tokenizer-model", help="SentencePiece .model / hf tokenizer.json (default: the file the "
                                             "shard's meta.json names, beside the shard)")
    p.add_argument("--max-documents", type=int, help="score only the first N documents")
    a = p.parse_args(argv)
    result = bits_per_byte(load_pretrained(a.model), a.data_prefix, a.tokenizer_model, a.max_documents)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
