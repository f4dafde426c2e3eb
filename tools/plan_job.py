"""Size a training job (memory per GPU, fit, communication, tokens/s): thin wrapper around
``megacompress.launch.plan`` (= ``megacompress launch plan``); run with ``--help`` for usage."""

import sys

from megacompress import cli
from megacompress.launch.plan import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
