"""``python -m megacompress.compression.compress``: kept for older command lines; the same as
``megacompress equal-info compress``."""

from megacompress import cli
from megacompress.methods.equal_info.compress import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
