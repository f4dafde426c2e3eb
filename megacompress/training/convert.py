"""Checkpoint conversions (``python tools/convert_checkpoint.py`` / ``python -m megacompress.training.convert``).

``to-universal CKPT_DIR OUT_DIR [--tag TAG]``
    DeepSpeed's universal checkpoint (``deepspeed.checkpoint.ds_to_universal
    --inject_missing_state``) of ``CKPT_DIR/TAG`` (default: ``latest``), written to
    ``OUT_DIR/TAG.tmp`` and renamed to ``OUT_DIR/TAG`` when complete, with our manifest
    (train state, configs, the saved ``universal_checkpoint_info``) carried over and
    ``OUT_DIR/latest_universal`` naming it. Resume on any DP size, and with ZeRO-1/2 on any TP
    size, with ``--set checkpoint.load_dir=OUT_DIR --set checkpoint.load_universal=true``.
    Refused: ZeRO-3 with TP > 1 and parameters listed as not reshardable in the info.

``verify CKPT_DIR [--tag TAG]``
    Check a received checkpoint without training on it: every file's size and sha256 against
    its ``manifest.json``, and every ``.pt`` file unpickled restricted (tensors and containers
    only: nothing it carries runs). Prints the manifest's own sha256, to compare with the one
    the sender publishes.

``export CKPT_DIR OUT_DIR [--tag TAG]``
    Consolidated fp32 weights: ``OUT_DIR/model.safetensors`` + ``config.json``, loadable by
    ``megacompress.models.load_pretrained(OUT_DIR)`` at any TP size, for any registered
    architecture. Works for any TP size and ZeRO stage:

    1. per TP rank ``t`` (TP size from the manifest), that rank's fp32 shards. ZeRO-1/2/3:
       DeepSpeed's ``zero_to_fp32`` merge of the DP partitions, run on a directory of links
       to the files named ``*mp_rank_{t:02d}_*`` (it globs one directory and expects one
       optimizer file per DP rank). ZeRO-0: the module of ``mp_rank_{t:02d}_model_states.pt``
       (full fp32 weights; a bf16 ZeRO-0 module is refused, its fp32 master weights are in
       ``bf16_*optim_states.pt`` files that ``zero_to_fp32`` cannot read);
    2. TP-sharded parameters concatenated along their ``partition_dim`` (read from a TP=1
       model of the manifest's config and architecture), rank order; replicated ones taken
       from rank 0;
    3. vocabulary tables (``Vp_tp = vocab_size`` padded to a multiple of ``128 * tp`` rows)
       checked to have all-zero padding rows and cut to the TP=1 padded size;
    4. loaded into the TP=1 model (strict: names and shapes) and written by ``save_pretrained``.

``import-hf HF_DIR OUT`` / ``import-gguf FILE.gguf OUT`` / ``export-hf MODEL OUT``
    Hugging Face Llama and llama.cpp GGUF models in and out (`megacompress.models.model_io_cli`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from deepspeed.checkpoint.constants import AUTOTP_UNSUPPORTED_PARAMETER_PATTERNS, UNIVERSAL_CHECKPOINT_INFO

from megacompress import cli
from megacompress.atomic import write_text_atomic
from megacompress.integrity import digest_file
from megacompress.models.model_io_cli import add_model_commands, run_model_command
from megacompress.parallel.layers import VocabParallelEmbedding
from megacompress.progress import progress
from megacompress.training.checkpoint import (MANIFEST, TAG_RE, CheckpointError, committed_tags, file_records,
                                              manifest_digests, read_latest, read_manifest, verify_checkpoint)
from megacompress.training.safe_load import guarded_torch_load


def _resolve(ckpt_dir: Path, tag: str | None) -> tuple[str, dict]:
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist")
    tag = tag or read_latest(ckpt_dir)
    if tag is None:
        raise CheckpointError(f"{ckpt_dir} has no 'latest' file (no committed checkpoint); pass --tag")
    if not TAG_RE.match(tag) or not (ckpt_dir / tag).is_dir():
        tags = committed_tags(ckpt_dir)
        raise CheckpointError(f"{ckpt_dir} has no checkpoint tag {tag!r} (it has: {', '.join(tags) or 'none'})")
    return tag, read_manifest(ckpt_dir / tag)


def saved_universal_info(tag_dir: Path, manifest: dict) -> dict | None:
    """The ``universal_checkpoint_info`` the checkpoint's first model-states file holds (None for
    checkpoints saved before it was recorded)."""
    files = sorted(tag_dir.glob("*mp_rank_00_model_states.pt"))
    if not files:
        raise CheckpointError(f"{tag_dir} has no *mp_rank_00_model_states.pt file")
    with guarded_torch_load(manifest_digests(tag_dir, manifest)):
        states = torch.load(files[0])
    if not isinstance(states, dict):
        raise CheckpointError(f"{files[0]}: not a DeepSpeed model-states file")
    return states.get(UNIVERSAL_CHECKPOINT_INFO)


def check_convertible(tag_dir: Path, manifest: dict, info: dict | None) -> None:
    """Refuse what a universal checkpoint cannot restore correctly, naming it."""
    parallel = manifest["train_config"]["parallel"]
    if parallel["zero_stage"] == 3 and parallel["tensor_parallel_size"] > 1:
        raise CheckpointError(f"{tag_dir}: a ZeRO-3 checkpoint with tensor_parallel_size="
                              f"{parallel['tensor_parallel_size']} cannot be made universal: DeepSpeed's ZeRO-3 "
                              "universal load does not split parameters over TP ranks (use ZeRO-1/2, or export)")
    unsupported = (info or {}).get(AUTOTP_UNSUPPORTED_PARAMETER_PATTERNS)
    if unsupported:
        raise CheckpointError(f"{tag_dir} cannot be made universal, these parameters cannot be restored from it: "
                              + "; ".join(unsupported.values()))


def to_universal(ckpt_dir: Path, out_dir: Path, tag: str | None = None) -> Path:
    tag, manifest = _resolve(ckpt_dir, tag)
    info = saved_universal_info(ckpt_dir / tag, manifest)
    check_convertible(ckpt_dir / tag, manifest, info)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp, final = out_dir / f"{tag}.tmp", out_dir / tag
    shutil.rmtree(tmp, ignore_errors=True)
    # ds_to_universal runs in a child process with every torch.load verified and restricted
    # (`safe_load.main`); what it writes into tmp and reads back is loaded restricted only.
    with tempfile.TemporaryDirectory(prefix="to_universal_") as spec_dir:
        spec = Path(spec_dir) / "spec.json"
        spec.write_text(json.dumps({"digests": manifest_digests(ckpt_dir / tag, manifest), "scratch": [str(tmp)]}))
        cmd = [sys.executable, "-m", "megacompress.training.safe_load", str(spec), "--", "--input_folder",
               str(ckpt_dir / tag), "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers",
               "1", "--num_merge_workers", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        refused = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        if refused:
            raise CheckpointError(refused[-1].removeprefix("error: "))
        raise CheckpointError(f"ds_to_universal failed on {ckpt_dir / tag}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    # The loader reads the TP layout from here to decide whether a TP change can be resharded.
    manifest.update(**file_records(tmp), universal=True, source=str(ckpt_dir / tag),
                    universal_checkpoint_info=info)
    write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    write_text_atomic(out_dir / "latest_universal", tag)
    return final


def tensor_parallel_rank_state_dict(tag_dir: Path, tp_rank: int, zero_stage: int) -> dict[str, torch.Tensor]:
    """TP rank ``tp_rank``'s fp32 parameters and buffers (its TP shards, DP partitions merged).

    Keys are module names (``embed.weight``, ...); TP-sharded tensors have their local shape.
    """
    files = sorted(tag_dir.glob(f"*mp_rank_{tp_rank:02d}_*"))
    if not files:
        raise CheckpointError(f"{tag_dir} has no files of TP rank {tp_rank} (*mp_rank_{tp_rank:02d}_*)")
    if zero_stage == 0:
        path = tag_dir / f"mp_rank_{tp_rank:02d}_model_states.pt"
        states = torch.load(path)  # inside `export`'s guarded_torch_load
        if not isinstance(states, dict) or not isinstance(states.get("module"), dict):
            raise CheckpointError(f"{path}: not a DeepSpeed model-states file (no 'module')")
        module = states["module"]
        low = sorted({str(v.dtype) for v in module.values() if v.is_floating_point() and v.dtype != torch.float32})
        if low:
            raise CheckpointError(f"{path} holds {', '.join(low)} weights (bf16 training under ZeRO-0): its fp32 "
                                  "master weights are in DeepSpeed's bf16_*optim_states.pt files, which export "
                                  "cannot read; train with parallel.zero_stage >= 1 to export fp32 weights")
        return module
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with tempfile.TemporaryDirectory(prefix="export_") as view:
        (Path(view) / tag_dir.name).mkdir()
        for file in files:
            (Path(view) / tag_dir.name / file.name).symlink_to(file.resolve())
        return get_fp32_state_dict_from_zero_checkpoint(view, tag=tag_dir.name)


def merge_tensor_parallel(model: torch.nn.Module, shards: list[dict[str, torch.Tensor]],
                          source: Path) -> dict[str, torch.Tensor]:
    """One state dict for the TP=1 ``model`` from the TP ranks' ``shards`` (rank order).

    ``sharding.gather`` is the collective form of this concatenation; here the shards are
    files, so it is a plain ``torch.cat`` along each parameter's ``partition_dim``.
    """
    for rank, shard in enumerate(shards[1:], 1):
        if shard.keys() != shards[0].keys():
            raise CheckpointError(f"{source}: TP rank {rank} has tensors {sorted(shard.keys() ^ shards[0].keys())} "
                                  "that TP rank 0 has not (or the reverse)")
    params = dict(model.named_parameters())
    vocab = {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, VocabParallelEmbedding)}
    merged = {}
    for name, local in shards[0].items():
        param = params.get(name)
        if param is None or not getattr(param, "tensor_model_parallel", False):
            merged[name] = local  # replicated over TP (norms, buffers): identical on every rank
            continue
        full = torch.cat([shard[name] for shard in shards], dim=param.partition_dim)
        if name in vocab:
            # Padding rows never receive a gradient, so they are still zero; anything else
            # means the shards are not in rank order or not ours.
            if full[vocab[name].num_embeddings:].any():
                raise CheckpointError(f"{source}: {name} has non-zero vocabulary padding rows after merging "
                                      f"{len(shards)} TP shards")
            full = full[:param.shape[0]]  # Vp_tp rows -> the TP=1 padded size
        merged[name] = full
    return merged


def export(ckpt_dir: Path, out_dir: Path, tag: str | None = None) -> Path:
    from megacompress.models import pretrained
    from megacompress.models.config import ModelConfig
    from megacompress.models.registry import build_model
    from megacompress.parallel import state

    tag, manifest = _resolve(ckpt_dir, tag)
    tag_dir = ckpt_dir / tag
    parallel = manifest["train_config"]["parallel"]
    tp = parallel["tensor_parallel_size"]
    if list(tag_dir.glob(f"*mp_rank_{tp:02d}_*")):
        raise CheckpointError(f"{tag_dir} has files of TP rank {tp}, but its manifest says tensor_parallel_size={tp}")
    model = build_model(ModelConfig.from_dict(manifest["model_config"]))
    if state.get_tensor_parallel_world_size() != 1:  # the merge below fills an unsharded model
        raise CheckpointError("export must run in a process without tensor parallelism (it is a CLI; "
                              "inside a TP run use GPT.save_pretrained)")
    with guarded_torch_load(manifest_digests(tag_dir, manifest)):  # zero_to_fp32's loads included
        shards = [tensor_parallel_rank_state_dict(tag_dir, rank, parallel["zero_stage"])
                  for rank in progress(range(tp), desc="TP ranks", enabled=tp > 1)]
    merged = merge_tensor_parallel(model, shards, tag_dir)
    try:
        model.load_state_dict(merged, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{tag_dir} does not match its model config: {exc}") from None
    model.save_pretrained(out_dir)
    _save_run_tokenizer(manifest["train_config"].get("tokenizer", {}), out_dir)
    pretrained.seal(out_dir)  # again: the tokenizer files are part of the export
    return out_dir


def _save_run_tokenizer(section: dict, out_dir: Path) -> None:
    """Record the training run's tokenizer beside the weights, so generation uses it by default."""
    from megacompress.data.tokenizers import build_tokenizer, save_tokenizer

    try:
        save_tokenizer(build_tokenizer(section.get("kind", "gpt2"), section.get("model_path") or None), str(out_dir))
    except (OSError, ValueError) as exc:  # a SentencePiece model or bitstream meta.json moved since training
        print(f"warning: the run's tokenizer is not recorded in {out_dir}: {exc}", file=sys.stderr)


def verify(ckpt_dir: Path, tag: str | None = None) -> int:
    tag, _ = _resolve(ckpt_dir, tag)
    manifest = verify_checkpoint(ckpt_dir / tag)
    print(f"{ckpt_dir / tag}: {len(manifest['files'])} files match their sha256 digests and hold only tensors "
          f"and containers; manifest.json {digest_file(ckpt_dir / tag / MANIFEST)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("megacompress.training.convert", __doc__.split("\n\n")[0],
                        script="tools/convert_checkpoint.py", epilog="See docs/training.md, 'Checkpoints'.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("to-universal", "DeepSpeed universal checkpoint (resume on another DP size)"),
                            ("export", "consolidated model.safetensors + config.json"),
                            ("verify", "check a received checkpoint: digests of every file, no code in its pickles")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("ckpt_dir", type=Path, help="checkpoint root (holds 'latest' and global_step*/)")
        if name != "verify":
            p.add_argument("out_dir", type=Path, help="output directory")
        p.add_argument("--tag", help="checkpoint tag, e.g. global_step40 (default: the 'latest' file)")
    add_model_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "to-universal":
        out = to_universal(args.ckpt_dir, args.out_dir, args.tag)
    elif args.command == "export":
        out = export(args.ckpt_dir, args.out_dir, args.tag)
    elif args.command == "verify":
        return verify(args.ckpt_dir, args.tag)
    else:
        out = run_model_command(args)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
