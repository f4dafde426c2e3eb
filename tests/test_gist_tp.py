"""Gist serving with tensor parallelism: ``torchrun -m megacompress.gist compress / generate
--tensor-parallel-size 2`` (two gloo processes) equals the single process: the stored cache
holds all heads (within 1e-5 of TP=1's) and the answers are the same text."""

import json
import subprocess

import pytest
from safetensors.torch import load_file

from distributed_helpers import cpu_env, run_checked, torchrun_command
from megacompress import gist as gist_cli
from workers.gist_common import tiny_gist_model

RECORDS = [
    {"instruction": "Say hello.", "input": "the world"},
    {"instruction": "Add the numbers.", "input": "2 and 3"},
    {"instruction": "Rewrite the sentence in the past tense."},
    {"instruction": "Say hello.", "input": "x " * 30},
]


def gist_torchrun(*args: str) -> list[str]:
    return torchrun_command(2, ["-m", "megacompress.gist", *args])


def gist_tp2(*args: str) -> None:
    run_checked(gist_torchrun(*args, "--tensor-parallel-size", "2"), env=cpu_env(), timeout=240)


@pytest.mark.distributed
def test_tp2_compress_and_generate_equal_one_process(tmp_path):
    model = tiny_gist_model(tmp_path, k=2)  # 2 KV heads: one per rank
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    common = ["--model", str(model), "--batch-size", "3"]
    answer = ["--inputs", str(inputs), "--max-new-tokens", "8"]
    assert gist_cli.main(["compress", *common, "--instructions", str(inputs), "--out", str(tmp_path / "c1")]) == 0
    assert gist_cli.main(["generate", *common, *answer, "--cache", str(tmp_path / "c1"),
                          "--out", str(tmp_path / "tp1.jsonl")]) == 0

    gist_tp2("compress", *common, "--instructions", str(inputs), "--out", str(tmp_path / "c2"))
    one, two = (load_file(tmp_path / c / "gists.safetensors") for c in ("c1", "c2"))
    assert one.keys() == two.keys()
    for name, tensor in one.items():
        assert two[name].shape == tensor.shape  # all heads, not one rank's
        assert (two[name] - tensor).abs().max() < 1e-5, name
    index = [json.loads((tmp_path / c / "index.json").read_text())["entries"] for c in ("c1", "c2")]
    assert index[0] == index[1]

    gist_tp2("generate", *common, *answer, "--cache", str(tmp_path / "c2"), "--out", str(tmp_path / "tp2.jsonl"))
    lines = (tmp_path / "tp2.jsonl").read_text()
    assert lines == (tmp_path / "tp1.jsonl").read_text() and len(lines.splitlines()) == len(RECORDS)

    # More processes than the TP size would only repeat the work: refused with the reason.
    done = subprocess.run(gist_torchrun("generate", *common, *answer, "--no-cache", "--out", str(tmp_path / "x.jsonl")),
                          env=cpu_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode != 0 and "run with as many processes as the tensor-parallel size" in done.stderr
