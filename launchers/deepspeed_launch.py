"""Kept for old command lines: ``python launchers/deepspeed_launch.py ...`` is ``megacompress launch deepspeed ...``
(``megacompress.launch.deepspeed_launch``), same flags and behaviour."""

import sys

from megacompress import cli
from megacompress.launch.deepspeed_launch import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
