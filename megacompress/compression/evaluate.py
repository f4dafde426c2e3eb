"""``python -m megacompress.compression.evaluate``: kept for older command lines; the same as
``megacompress equal-info evaluate``."""

from megacompress import cli
from megacompress.methods.equal_info.evaluate import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
