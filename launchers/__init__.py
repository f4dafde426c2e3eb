"""Launchers for `python -m megacompress.train`: SLURM (submitit), deepspeed and torchrun.

Run them as scripts from the repository root (`python launchers/slurm.py --help`) or as
modules (`python -m launchers.slurm --help`). See docs/launching.md.
"""
