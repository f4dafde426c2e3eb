"""Plot training runs (loss, validation loss, LR, throughput): thin wrapper around
``megacompress.training.plot``; run with ``--help`` for usage."""

import sys

from megacompress import cli
from megacompress.training.plot import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
