"""The ``bitstream`` dataset kind: GPT-style samples over compressed-text token shards.

A bitstream shard (``megacompress.methods.equal_info.shards``) stores each document's codec
tokens, ids ``0 .. v-1``, with nothing marking its end, so samples are ``GPTDataset``
windows with the tokenizer's eod id (``v``, outside the codec ids) inserted after every
document. The training tokenizer must be ``bitstream`` (``tokenizer: {kind: bitstream,
model_path: SHARD.meta.json}``), whose fingerprint the data builder has already compared
with the shard's: same codec, same M1.
"""

from __future__ import annotations

from megacompress.data.collate import TOKEN_BATCH_KEYS
from megacompress.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megacompress.data.registry import DataConfigError, register_dataset_kind


def build_bitstream(prefix, meta, config, seq_length, num_samples, document_range, tokenizer, cache_dir):
    if "codec" not in meta or tokenizer.name != "bitstream":
        raise DataConfigError(f"{prefix}.meta.json: data.kind=bitstream needs a shard written by "
                              f"tools/compress_corpus.py and tokenizer.kind=bitstream (got {tokenizer.name})")
    cfg = GPTDatasetConfig(seq_length=seq_length, eod_id=tokenizer.eod, num_samples=num_samples, seed=config.seed,
                           add_eod=True, shuffle=config.shuffle, document_range=document_range)
    return GPTDataset(prefix, cfg, cache_dir)


register_dataset_kind("bitstream", build_bitstream, TOKEN_BATCH_KEYS)
