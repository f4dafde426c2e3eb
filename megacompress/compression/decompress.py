"""``python -m megacompress.compression.decompress``: kept for older command lines; the same as
``megacompress equal-info decompress``."""

from megacompress import cli
from megacompress.methods.equal_info.decompress import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
