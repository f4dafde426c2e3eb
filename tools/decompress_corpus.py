"""Entry point: ``python tools/decompress_corpus.py --help`` (see docs/equal_info.md).

The same as ``megacompress equal-info decompress``: a thin wrapper around :mod:`megacompress.methods.equal_info.decompress`.
"""

from megacompress import cli
from megacompress.methods.equal_info.decompress import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
