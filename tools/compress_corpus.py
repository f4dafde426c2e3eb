"""Entry point: ``python tools/compress_corpus.py --help`` (see docs/equal_info.md).

The same as ``megacompress equal-info compress``: a thin wrapper around :mod:`megacompress.methods.equal_info.compress`.
"""

from megacompress import cli
from megacompress.methods.equal_info.compress import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
