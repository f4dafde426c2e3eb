"""Kept for old command lines: ``python launchers/comm_volume.py`` and ``python -m launchers.comm_volume``
are ``python -m megacompress.launch.comm_volume``, same flags and output."""

import sys

from megacompress import cli
from megacompress.launch.comm_volume import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
