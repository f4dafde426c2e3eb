"""Kept for old command lines: ``python launchers/torchrun.py ...`` is ``megacompress launch torchrun ...``
(``megacompress.launch.torchrun``), same flags and behaviour."""

import sys

from megacompress import cli
from megacompress.launch.torchrun import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
