"""The old home of the launchers, kept for old command lines; they now live in `megacompress.launch`.

``python launchers/torchrun.py ...`` = ``megacompress launch torchrun ...`` (likewise
``deepspeed_launch.py`` = ``deepspeed``, ``slurm.py`` = ``slurm``); ``python -m launchers.X``
works too. See docs/launching.md.
"""
