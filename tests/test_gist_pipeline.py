"""Instruction data (format, labels, truncation, counts) and the gist pipeline end to end:
init -> prepare -> python -m megacompress.train -> export -> compress -> generate -> evaluate."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from distributed_helpers import cpu_env
from megacompress import cli
from megacompress import gist as gist_cli
from megacompress.data.collate import collate
from megacompress.methods.gist.data import (InstructionDataError, InstructionDataset, InstructionFormat,
                                                   prepare_instruction_shard, read_records)
from megacompress.data.tokenizers import build_tokenizer
from megacompress.training import convert
from workers.gist_common import tiny_gist_model

RECORDS = [
    {"instruction": "Say hello.", "input": "the world", "output": "Hello, world!"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Rewrite the sentence in the past tense.", "output": "She walked to school."},  # no input
    {"instruction": "Say hello.", "input": "x " * 40, "output": "Hello there, long input."},
    {"instruction": "Missing output."},
    {"instruction": "Empty output.", "input": "", "output": "  "},
    {"input": "no instruction", "output": "?"},
    {"instruction": "word " * 60, "input": "", "output": "too long an instruction"},
]


@pytest.fixture(scope="module")
def gist1(tmp_path_factory):
    return tiny_gist_model(tmp_path_factory.mktemp("gist"), k=1)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_instruction_shard_format_labels_truncation_and_counts(gist1, tmp_path):
    tok = build_tokenizer("hf", str(gist1))
    fmt = InstructionFormat(tok, 1)
    meta = prepare_instruction_shard(str(write_jsonl(tmp_path / "d.jsonl", RECORDS)), tok, 1, str(tmp_path / "s"))
    assert meta["instruction"]["skipped"] == {"missing_output": 1, "empty_output": 1, "missing_instruction": 1}
    with pytest.warns(UserWarning, match="1 are too long and left out, 1 lose the end of their input"):
        data = InstructionDataset(str(tmp_path / "s"), 48, 10, (0, 5), tok.special_id("pad"), shuffle=False)
    assert len(data.records) == 4 and len(data) == 10  # 4 fitting records, repeated over epochs
    sample = data[0]
    rec = fmt.format("Say hello.", "the world", "Hello, world!")
    n = len(rec.tokens) - 1
    assert sample["input_ids"][:n].tolist() == rec.tokens[:-1]
    assert tok.decode(rec.tokens[:rec.output_start]) == "Instruction: Say hello.\n<GIST>\nInput: the world\nOutput:"
    labels = sample["labels"]
    assert (labels[:rec.output_start - 1] == -100).all() and (labels[n:] == -100).all()
    assert labels[rec.output_start - 1:n].tolist() == rec.tokens[rec.output_start:]  # output + eod only
    assert tok.decode(labels[labels >= 0]) == " Hello, world!<|im_end|>"
    assert int(sample["gist_start"]) == rec.gist_start and rec.tokens[rec.gist_start] == tok.special_id("gist")
    long = data[3]  # the long input lost its end, not its output
    target = long["labels"][long["labels"] >= 0]
    assert tok.decode(target) == " Hello there, long input.<|im_end|>" and (long["document_ids"] == 0).all()
    batch = collate([data[i] for i in range(3)])
    assert batch["gist_start"].shape == (3,) and batch["input_ids"].shape == (3, 48)
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a"}\nnot json\n')
    with pytest.raises(InstructionDataError, match="bad.jsonl:2: invalid JSON"):
        read_records(tmp_path / "bad.jsonl")


def test_packed_records_compute_what_they_compute_alone(gist1, tmp_path):
    """data.pack_records: rows hold whole records in the unpacked order; each record's slots are
    its unpacked sample shifted, and under the gist mask (spans per slot) each record's loss and
    logits equal the record run alone."""
    from megacompress.models import load_pretrained

    tok = build_tokenizer("hf", str(gist1))
    prepare_instruction_shard(str(write_jsonl(tmp_path / "d.jsonl", RECORDS[:4] * 2)), tok, 1, str(tmp_path / "s"))
    args = (str(tmp_path / "s"), 96)
    with pytest.warns(UserWarning):  # the long input is cut
        alone = InstructionDataset(*args, 40, (0, 8), tok.special_id("pad"), seed=3)
        packed = InstructionDataset(*args, 5, (0, 8), tok.special_id("pad"), seed=3, pack=True)
    assert len(packed) == 5 and max(map(len, packed.rows)) > 1
    with pytest.warns(UserWarning):  # more rows than one record each would fill: epochs are added
        many = InstructionDataset(*args, 20, (0, 8), tok.special_id("pad"), seed=3, pack=True)
    assert len(many) == 20 and many.rows[:5] == packed.rows
    flat = [r for row in packed.rows for r in row]
    assert flat == alone.order[:len(flat)].tolist()  # the same records in the same order
    model = load_pretrained(gist1).eval()
    model.embed.weight.data[-1].normal_(0, 0.5)  # a gist row unlike the others
    batch = collate([packed[i] for i in range(len(packed))])
    assert batch["gist_start"].shape == batch["input_ids"].shape
    with torch.no_grad():
        out = model(**{k: batch[k] for k in ("input_ids", "position_ids", "document_ids", "labels", "gist_start",
                                             "gist_end")})
        at = {}
        for row, records in enumerate(packed.rows):
            docs = batch["document_ids"][row]
            for j, index in enumerate(records):
                one = alone[alone.order.tolist().index(index)]
                slots = (docs == j).nonzero().flatten()
                n = len(slots)
                assert (batch["input_ids"][row, slots] == torch.from_numpy(one["input_ids"][:n])).all()
                assert (batch["labels"][row, slots] == torch.from_numpy(one["labels"][:n])).all()
                assert int(batch["gist_start"][row, slots[0]]) == int(slots[0]) + int(one["gist_start"])
                single = collate([one])
                logits = model(**{k: single[k] for k in ("input_ids", "position_ids", "document_ids",
                                                         "gist_start", "gist_end")}).logits[0, :n]
                at[(row, j)] = (out.logits[row, slots] - logits).abs().max().item()
    assert max(at.values()) < 1e-5, at
    with pytest.raises(Exception, match="pack_records is for data.kind 'instruction'"):
        from megacompress.data.builder import DataConfig, build_datasets
        build_datasets(DataConfig(data_path=[str(tmp_path / "s")], kind="gpt", pack_records=True), tok, 96, [1, 0, 0])


def train_gist(model, tokenizer, data, tmp_path, repo_root) -> subprocess.CompletedProcess:
    """3 steps of ``python -m megacompress.train`` from ``model`` on the shard ``data`` (run dir tmp_path/run)."""
    model_config = json.loads((model / "config.json").read_text())
    config = {"model": {"preset": "tiny", "init_from": str(model), **model_config},
              "data": {"data_path": [str(data)], "kind": "instruction", "split": "1,0,0"},
              "tokenizer": {"kind": "hf", "model_path": str(tokenizer)}, "eval": {"iters": 1, "data_path": [str(data)]},
              "optimizer": {"lr": 1e-3}, "schedule": {"train_steps": 3, "warmup_steps": 1, "global_batch_size": 4,
                                                      "micro_batch_size": 2},
              "parallel": {"zero_stage": 1}, "logging": {"run_dir": str(tmp_path / "run"), "progress_bar": False}}
    (tmp_path / "gist.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "megacompress.train", "--config", str(tmp_path / "gist.yaml")],
                          env=cpu_env(), capture_output=True, text=True, timeout=300, cwd=repo_root)


def test_gist_pipeline_end_to_end(gist1, tmp_path, repo_root, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:4] * 2)
    assert gist_cli.main(["prepare", "--model", str(gist1), "--data", str(train), "--out", str(tmp_path / "d")]) == 0
    done = train_gist(gist1, gist1, tmp_path / "d", tmp_path, repo_root)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
    trained = tmp_path / "trained"
    assert convert.main(["export", str(tmp_path / "run" / "checkpoints"), str(trained)]) == 0
    before, after = _weights(gist1, trained)
    assert not torch.equal(before, after)  # trained from the gist model's weights, and they moved

    common = ["--model", str(trained), "--tokenizer", str(gist1)]
    inputs = write_jsonl(tmp_path / "inputs.jsonl", [{k: r[k] for k in ("instruction", "input") if k in r}
                                                     for r in RECORDS[:4]])
    assert gist_cli.main(["compress", *common, "--instructions", str(inputs), "--out", str(tmp_path / "c")]) == 0
    for flag, out in ((["--cache", str(tmp_path / "c")], "cached.jsonl"), (["--no-cache"], "full.jsonl")):
        assert gist_cli.main(["generate", *common, *flag, "--inputs", str(inputs), "--batch-size", "3",
                              "--max-new-tokens", "6", "--out", str(tmp_path / out)]) == 0
    cached, full = ((tmp_path / n).read_text().splitlines() for n in ("cached.jsonl", "full.jsonl"))
    assert cached == full and len(cached) == 4
    assert [json.loads(line)["instruction"] for line in cached] == [r["instruction"] for r in RECORDS[:4]]
    assert gist_cli.main(["evaluate", *common, "--data", str(train), "--max-new-tokens", "4", "--batch-size", "4",
                          "--efficiency-tokens", "2", "--out", str(tmp_path / "report.json")]) == 0
    assert "per_record" not in capsys.readouterr().out  # the summary is printed, the outputs go to --out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["records"] == 8 and 0 <= report["rouge_l"] <= 100
    scores = [r["rouge_l"] for r in report["per_record"]]
    assert len(scores) == 8 and report["rouge_l"] == pytest.approx(sum(scores) / 8)
    assert report["rouge_l_stderr"] == pytest.approx(np.std(scores, ddof=1) / 8 ** 0.5)
    eff = report["efficiency"]
    assert eff["prefill_flops_ratio"] < 1 and eff["kv_bytes_ratio"] == eff["compression_factor"] > 1

    # a cache made by another model (the untrained gist model) is refused by name
    assert gist_cli.main(["compress", "--model", str(gist1), "--instructions", str(inputs),
                          "--out", str(tmp_path / "c0")]) == 0
    assert cli.run(gist_cli.main, ["generate", *common, "--cache", str(tmp_path / "c0"), "--inputs", str(inputs),
                                   "--out", str(tmp_path / "x.jsonl")]) == 2  # a user error
    assert "made by another model" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert cli.run(gist_cli.main, ["compress", *common, "--instructions", str(tmp_path / "empty.jsonl"),
                                   "--out", str(tmp_path / "c1")]) == 2
    assert "empty.jsonl: no records" in capsys.readouterr().err and not (tmp_path / "c1").exists()


def _weights(*dirs):
    from safetensors.torch import load_file

    return [load_file(d / "model.safetensors")["stack.layers.0.attn.qkv.weight"] for d in dirs]


def test_training_refuses_shards_of_another_k(gist1, tmp_path, repo_root):
    # Shards formatted with 2 gists, a model made with 1: its mask would follow the shard's spans.
    gist2 = tiny_gist_model(tmp_path / "k2", k=2)
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:4] * 2)
    assert gist_cli.main(["prepare", "--model", str(gist2), "--data", str(train), "--out", str(tmp_path / "d2")]) == 0
    done = train_gist(gist1, gist2, tmp_path / "d2", tmp_path, repo_root)
    assert done.returncode != 0
    assert (f"{tmp_path / 'd2'}: the train data was prepared for model.gist_tokens=2 but the model has "
            "gist_tokens=1") in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_paired_intervals_of_per_record_scores():
    from megacompress.methods.gist.evaluate import paired_interval, quality

    report = quality(["the cat sat", "a dog ran"], ["the cat sat", "the bird flew"], [3, 3], [3, 3])
    assert [r["rouge_l"] for r in report["per_record"]] == [100, 0] and report["rouge_l"] == 50
    a = [30.0, 20.0, 10.0, 40.0, 0.0]
    # every resample of the same records keeps an exact ratio / offset, and a spread one brackets its mean
    assert paired_interval(a, [2 * x for x in a])["ratio"] == pytest.approx([0.5, 0.5])
    assert paired_interval(a, [x + 5 for x in a])["difference"] == pytest.approx([-5, -5])
    low, high = paired_interval(a, [20.0] * 5)["ratio"]
    assert low < 1 < high
    with pytest.raises(ValueError, match="same records"):
        paired_interval(a, a[:4])
