"""Kept for old command lines: ``python launchers/slurm.py ...`` is ``megacompress launch slurm ...``
(``megacompress.launch.slurm``), same flags and behaviour."""

import sys

from megacompress import cli
from megacompress.launch.slurm import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
