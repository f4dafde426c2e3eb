"""Megatron-style entry point: ``python tools/preprocess_data.py --help``.

Thin wrapper around :mod:`megacompress.data.preprocess` (same flags).
"""

from megacompress.data.preprocess import main

if __name__ == "__main__":
    main()
