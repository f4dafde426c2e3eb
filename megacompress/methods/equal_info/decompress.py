"""``tools/decompress_corpus.py``: a bitstream shard -> the exact original documents (JSON lines).

Every document is decoded, checked against its recorded byte length and crc32, and
written as ``{KEY: text}`` (KEY: the shard's json key) to ``--output``; an ``--output``
ending in ``.txt`` gets plain text instead, each document followed by a newline (JSON lines
keep document boundaries exactly; plain text is for reading). Written atomically: on any
error (another M1, a corrupt or truncated stream) nothing is written and the command exits
non-zero naming the shard file and the document.
"""

from __future__ import annotations

import json
import time

from megacompress import cli
from megacompress.atomic import atomic_write
from megacompress.methods.equal_info.codec import M1_SCHEMES, CodecConfig, build_codec
from megacompress.methods.equal_info.shards import check_m1, document_info, meta_path, read_documents, read_meta
from megacompress.progress import progress

BLOCK_DOCUMENTS = 64


def decompress(input_prefix: str, output: str, m1_dir: str | None) -> dict:
    from megacompress.methods.equal_info.m1 import M1

    meta = read_meta(input_prefix)
    config = CodecConfig.from_dict(meta["codec"], meta_path(input_prefix))
    m1 = M1(m1_dir) if m1_dir and config.scheme in M1_SCHEMES else None
    check_m1(input_prefix, meta, None if m1 is None else m1.hash)
    codec = build_codec(config, m1)
    n = len(document_info(input_prefix))
    key = meta.get("json_key", "text")
    plain = output.endswith(".txt")
    start = time.perf_counter()
    total = 0

    def write(tmp: str) -> None:
        nonlocal total
        with open(tmp, "w", encoding="utf-8") as f, progress(total=n, desc="decompress", unit="doc") as bar:
            for first in range(0, n, BLOCK_DOCUMENTS):
                docs = read_documents(input_prefix, codec, None if m1 is None else m1.hash, first,
                                      min(n, first + BLOCK_DOCUMENTS))
                for data in docs:
                    text = data.decode("utf-8")
                    f.write(text + "\n" if plain else json.dumps({key: text}, ensure_ascii=False) + "\n")
                    total += len(data)
                bar.update(len(docs))

    atomic_write(output, write)
    return {"documents": n, "bytes": total, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict:
    p = cli.parser("megacompress.methods.equal_info.decompress", __doc__.split("\n")[0], script="tools/decompress_corpus.py")
    p.add_argument("--m1", help="the exported M1 the shard was made with (equal_info and ac)")
    p.add_argument("--input-prefix", required=True, help="a shard prefix (OUTPUT_PREFIX_{key}_document)")
    p.add_argument("--output", required=True, help="JSON-lines file to write (plain text if it ends in .txt)")
    a = p.parse_args(argv)
    s = decompress(a.input_prefix, a.output, a.m1)
    print(f"done: {s['documents']} documents, {s['bytes']:,} bytes in {s['seconds']:.2f} s "
          f"({s['bytes'] / max(s['seconds'], 1e-9) / 1e3:,.1f} kB/s) -> {a.output}", flush=True)
    return s
