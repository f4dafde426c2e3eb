"""Entry point: ``python tools/decompress_corpus.py --help`` (see docs/equal_info.md).

Thin wrapper around :mod:`megacompress.compression.decompress`.
"""

from megacompress.compression.decompress import main

if __name__ == "__main__":
    main()
