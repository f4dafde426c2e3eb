"""Convert training checkpoints: ``to-universal`` (reshard) or ``export`` (safetensors).

Thin wrapper around ``megacompress.training.convert``; run with ``--help`` for usage.
"""

import sys

from megacompress import cli
from megacompress.training.convert import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
