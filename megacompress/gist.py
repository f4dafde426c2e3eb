"""``python -m megacompress.gist``: kept for older command lines; the same as ``megacompress gist``."""

from megacompress import cli
from megacompress.methods.gist.cli import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
