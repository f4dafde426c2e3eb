"""Entry point: ``python tools/compress_corpus.py --help`` (see docs/equal_info.md).

Thin wrapper around :mod:`megacompress.compression.compress`.
"""

from megacompress.compression.compress import main

if __name__ == "__main__":
    main()
