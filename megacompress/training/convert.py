"""Checkpoint conversions (``python tools/convert_checkpoint.py`` / ``python -m megacompress.training.convert``).

``to-universal CKPT_DIR OUT_DIR [--tag TAG]``
    DeepSpeed's universal checkpoint (``deepspeed.checkpoint.ds_to_universal
    --inject_missing_state``) of ``CKPT_DIR/TAG`` (default: ``latest``), written to
    ``OUT_DIR/TAG.tmp`` and renamed to ``OUT_DIR/TAG`` when complete, with our manifest
    (train state, configs) carried over and ``OUT_DIR/latest_universal`` naming it. Resume on
    any DP size with ``--set checkpoint.load_dir=OUT_DIR --set checkpoint.load_universal=true``.

``export CKPT_DIR OUT_DIR [--tag TAG]``
    Consolidated fp32 weights: ``OUT_DIR/model.safetensors`` + ``config.json``, loadable by
    ``GPT.from_pretrained(OUT_DIR)`` at any TP size. ZeRO-1/2/3 shards are merged with
    DeepSpeed's ``zero_to_fp32`` helpers; a ZeRO-0 checkpoint holds the full module already.
    Checkpoints trained with TP > 1 are refused (DeepSpeed's merge is per TP rank).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from megacompress.training.checkpoint import (MANIFEST, CheckpointError, list_files, read_latest, read_manifest,
                                              write_text_atomic)


def _resolve(ckpt_dir: Path, tag: str | None) -> tuple[str, dict]:
    tag = tag or read_latest(ckpt_dir)
    if tag is None:
        raise CheckpointError(f"{ckpt_dir} has no 'latest' file; pass --tag")
    return tag, read_manifest(ckpt_dir / tag)


def to_universal(ckpt_dir: Path, out_dir: Path, tag: str | None = None) -> Path:
    tag, manifest = _resolve(ckpt_dir, tag)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp, final = out_dir / f"{tag}.tmp", out_dir / tag
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt_dir / tag),
           "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "1",
           "--num_merge_workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckpointError(f"ds_to_universal failed on {ckpt_dir / tag}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    manifest.update(files=list_files(tmp), universal=True, source=str(ckpt_dir / tag))
    write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    write_text_atomic(out_dir / "latest_universal", tag)
    return final


def consolidated_state_dict(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 parameters (DeepSpeed module names) of a TP=1 checkpoint."""
    path = ckpt_dir / tag
    if list(path.glob("mp_rank_01_*")) or list(path.glob("*_mp_rank_01_*")):
        raise CheckpointError(f"{path} was trained with tensor parallelism > 1; export needs a TP=1 checkpoint")
    if not list(path.glob("*optim_states.pt")) or json.loads((path / MANIFEST).read_text()) \
            ["train_config"]["parallel"]["zero_stage"] == 0:
        state = torch.load(path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {k: v.float() for k, v in state["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)


def export(ckpt_dir: Path, out_dir: Path, tag: str | None = None) -> Path:
    from megacompress.models.config import ModelConfig
    from megacompress.models.gpt import GPT

    tag, manifest = _resolve(ckpt_dir, tag)
    model = GPT(ModelConfig.from_dict(manifest["model_config"]))
    state = consolidated_state_dict(ckpt_dir, tag)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt_dir / tag} does not match its model config: missing {missing}, "
                              f"unexpected {unexpected}")
    model.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/convert_checkpoint.py",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="See docs/training.md, 'Checkpoints'.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("to-universal", "DeepSpeed universal checkpoint (resume on another DP size)"),
                            ("export", "consolidated model.safetensors + config.json")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("ckpt_dir", type=Path, help="checkpoint root (holds 'latest' and global_step*/)")
        p.add_argument("out_dir", type=Path, help="output directory")
        p.add_argument("--tag", help="checkpoint tag, e.g. global_step40 (default: the 'latest' file)")
    args = parser.parse_args(argv)
    try:
        if args.command == "to-universal":
            out = to_universal(args.ckpt_dir, args.out_dir, args.tag)
        else:
            out = export(args.ckpt_dir, args.out_dir, args.tag)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
