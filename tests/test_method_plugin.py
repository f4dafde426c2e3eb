"""A fourth method needs no edit of ``megacompress/``: the toy ``chunk`` method of
``tests/plugins/chunk_method`` (block-diagonal attention in fixed-size chunks: its own mask kind,
config subclass, preset, dataset kind, tokenizer special, cached generator and subcommand) is
loaded with ``MEGACOMPRESS_PLUGINS=plugins.chunk_method`` and goes through the whole pipeline:
preprocess, 3 steps of ZeRO-2 training on 2 gloo processes, export, exact reload, fast == slow
generation, ``megacompress chunk info``.

Everything that loads the plugin runs in subprocesses: its ``<CHUNK>`` special makes the bytes
and gpt2 vocabularies one id longer, which must not leak into the other tests of this process.
"""

import itertools
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
from distributed_helpers import REPO_ROOT, cpu_env, run_checked, torchrun_command

PLUGIN = "plugins.chunk_method"
PLUGIN_DIR = Path(__file__).resolve().parent / "plugins" / "chunk_method"
PROMPTS = ["First Citizen: Before we proceed", "Speak, speak."]


def plugin_env() -> dict[str, str]:
    env = cpu_env({"MEGACOMPRESS_PLUGINS": PLUGIN})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "tests"), env["PYTHONPATH"]])
    return env


def megacompress(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return run_checked([sys.executable, "-m", "megacompress", *map(str, args)], env=env or plugin_env(),
                       timeout=timeout)


@pytest.fixture(scope="module")
def chunk_run(tmp_path_factory):
    """Preprocess a small corpus, train a tiny chunk model 3 steps (ZeRO-2, DP=2), export it."""
    tmp = tmp_path_factory.mktemp("chunk_method")
    corpus = tmp / "corpus.jsonl"
    with open(REPO_ROOT / "data" / "sample" / "train.jsonl") as f:
        corpus.write_text("".join(itertools.islice(f, 16)))
    megacompress("preprocess", "--input", corpus, "--output-prefix", tmp / "corpus", "--tokenizer", "bytes",
                 "--append-eod")
    shard = tmp / "corpus_text_document"
    run = tmp / "run"
    settings = ["model.preset=tiny-chunk", "data.kind=chunk", f"data.data_path=[{shard}]", "tokenizer.kind=bytes",
                f"eval.data_path=[{shard}]", "eval.iters=1", "schedule.train_steps=3", "schedule.warmup_steps=1",
                "schedule.global_batch_size=4", "schedule.micro_batch_size=2", "parallel.zero_stage=2",
                "parallel.tensor_parallel_size=1", "logging.progress_bar=false", f"logging.run_dir={run}"]
    run_checked(torchrun_command(2, ["-m", "megacompress.train", *[a for s in settings for a in ("--set", s)]]),
                env=plugin_env(), timeout=300)
    export = tmp / "export"
    megacompress("convert", "export", run / "checkpoints", export)
    return {"tmp": tmp, "run": run, "export": export}


@pytest.mark.distributed
def test_plugin_method_trains_under_zero2_and_exports(chunk_run):
    records = [json.loads(line) for line in (chunk_run["run"] / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["loss"] < 6.5 for r in records)  # ln(260) = 5.56 at random init
    config = json.loads((chunk_run["export"] / "config.json").read_text())
    assert config["architecture"] == "chunk" and config["chunk_size"] == 8 and config["vocab_size"] == 260


@pytest.mark.distributed
def test_plugin_model_reloads_exactly_and_generates_fast_equal_to_slow(chunk_run):
    out = chunk_run["tmp"] / "check.json"
    run_checked([sys.executable, str(REPO_ROOT / "tests" / "workers" / "chunk_method_check.py"), "--ckpt",
                 str(chunk_run["run"] / "checkpoints"), "--model", str(chunk_run["export"]), "--out", str(out)],
                env=plugin_env(), timeout=120)
    r = json.loads(out.read_text())
    assert r["class"] == "ChunkGPT" and r["class_module"] == "plugins.chunk_method.model"
    assert r["plugin_loaded_by_env"] and r["zero_stage"] == 2 and r["config"]["chunk_size"] == 8
    # exact reload: two loads of the export and the checkpoint's own fp32 ZeRO-2 partitions
    assert r["same_logits_reload"] and r["same_logits_checkpoint"]
    # the mask: causal inside chunks of 8 of each document (doc 1 of row 0 starts at 23; row 1 padded to 5)
    assert r["dense_mask_ok"]
    assert r["block_starts"] == [[0, 8], [0, 16], [0, 31], [0, 39], [1, 13], [1, 21], [1, 29], [1, 37]]
    assert r["change_in_chunk0_max_diff"]["chunk0"] > 1e-4 and r["change_in_chunk0_max_diff"]["later_chunks"] == 0
    # generation: <CHUNK>-prefixed prompts; the chunk cache == uncached == the GPT's full KV cache
    assert r["prompts_start_with_chunk"] and r["generator"] == "plugins.chunk_method.generation.generate_chunked"
    assert r["fast_tokens"] == r["slow_tokens"] == r["plain_tokens"]
    assert all(len(t) == 30 for t in r["fast_tokens"])  # no eod in 30 greedy steps, or rows stopped early
    assert r["sampled_fast_tokens"] == r["sampled_slow_tokens"]
    assert all(len(set(t)) > 5 for t in r["sampled_fast_tokens"])  # varied text, unlike the greedy one
    assert max(r["max_logit_diff"].values()) < 1e-4  # every step of greedy, sampled and forced text
    assert r["teacher_forced_max_diff"] < 1e-4 and r["teacher_forced_max_diff_forced"] < 1e-4
    cache = r["kv_cache_bytes"]
    assert 0 < cache["fast"] <= cache["chunk_bound"] < cache["plain"]


@pytest.mark.distributed
def test_plugin_generate_cli_fast_equals_slow(chunk_run):
    prompts = [a for p in PROMPTS for a in ("--prompt", p)]
    for sampling in ([], ["--temperature", "1.0", "--seed", "3"]):  # greedy, then sampled (varied) text
        texts = {mode: megacompress("generate", "--model", chunk_run["export"], *prompts, "--max-new-tokens", 20,
                                    "--no-stop-at-eod", *sampling, "--mode", mode).stdout for mode in ("fast", "slow")}
        assert texts["fast"] == texts["slow"]
        assert all(f"=== prompt: {p!r}\n{p}" in texts["fast"] for p in PROMPTS)


@pytest.mark.distributed
def test_plugin_subcommand(chunk_run):
    info = megacompress("chunk", "info", "--model", chunk_run["export"]).stdout
    assert "architecture: chunk" in info and "chunk_size: 8" in info and "<CHUNK> = 259" in info
    listed = re.compile(r"^\s+chunk\s+Chunk models", re.M)
    assert listed.search(megacompress("--help").stdout)
    without = cpu_env()
    without.pop("MEGACOMPRESS_PLUGINS", None)
    assert not listed.search(megacompress("--help", env=without).stdout)  # only with the plugin


def test_package_does_not_mention_the_plugin():
    """The plugin needed no edit of megacompress/: no file there names any part of it."""
    names = [b"chunk_causal", b"chunk_method", b"ChunkGPT", b"ChunkConfig", b"<CHUNK>", b"tiny-chunk"]
    assert (PLUGIN_DIR / "masks.py").read_bytes().count(b"chunk_causal")  # the names are the plugin's
    files = [path for path in sorted((REPO_ROOT / "megacompress").rglob("*")) if path.is_file()]
    hits = [f"{path.relative_to(REPO_ROOT)}: {name.decode()}" for path in files for name in names
            if name in path.read_bytes()]
    assert hits == []
