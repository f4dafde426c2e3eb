"""Megatron-style entry point: ``python tools/preprocess_data.py --help``.

The same as ``megacompress preprocess``: a thin wrapper around :mod:`megacompress.data.preprocess`.
"""

from megacompress import cli
from megacompress.data.preprocess import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
