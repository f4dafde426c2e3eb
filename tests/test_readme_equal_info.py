"""The README's Equal-Info pipeline runs as written, in order, on a fresh checkout.

The commands of the first ```bash block of README.md's "Equal-Info Windows" section (pack
bytes, train M1, export, compress train/valid, train M2, export, bits/byte, generate,
decompress) run in order in a scratch directory that links the repository's files. The one
liberty taken: the quick flags the README lists for its long steps (`QUICK` below; the README
must state each of them), appended to the command.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
from distributed_helpers import REPO_ROOT, cpu_env
from test_readme_commands import readme_commands

LINKED = ("data", "configs", "ds_configs", "tools", "megacompress", "examples", "launchers", ".venv")
M1_QUICK = ["--set", "schedule.train_steps=2", "--set", "eval.iters=1", "--set", "model.hidden_size=32",
            "--set", "model.num_layers=1", "--set", "model.ffn_hidden_size=64", "--set", "model.max_seq_len=128"]
QUICK = {
    "train M1": M1_QUICK,
    "train M2": ["--set", "schedule.train_steps=2", "--set", "eval.iters=1"],
    "evaluate": ["--max-documents", "4"],
    "generate": ["--max-new-tokens", "8"],
}
STEPS = [("pack bytes", "megacompress preprocess"), ("train M1", "configs/m1.yaml"),
         ("export M1", "convert export runs/m1/"), ("compress", "equal-info compress"),
         ("train M2", "configs/m2_equal_info.yaml"), ("export M2", "convert export runs/m2/"),
         ("evaluate", "equal-info evaluate"), ("generate", "megacompress generate"),
         ("decompress", "equal-info decompress")]
ORDER = [name for name, _ in STEPS]


def section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("\n## Equal-Info Windows\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def pipeline_commands() -> list[str]:
    return readme_commands(re.search(r"```bash\n.*?```", section(), flags=re.S).group(0))


def step_of(command: str) -> str | None:
    return next((name for name, words in STEPS if words in command), None)


def _in_order(steps: list[str]) -> list[str]:
    return [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s]


def test_readme_equal_info_section_is_the_pipeline_in_order():
    commands = pipeline_commands()
    assert _in_order([step_of(c) for c in commands]) == ORDER, commands
    text = section().replace("`", "")
    assert "../shared" not in text and "data/sample/" in text
    for flags in QUICK.values():  # the quick variants the test uses are the ones the README states
        assert " ".join(flags) in text, flags


@pytest.mark.slow
def test_readme_equal_info_pipeline_runs_as_written(tmp_path):
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    ran = []
    for command in pipeline_commands():
        step = step_of(command)
        argv = shlex.split(command) + QUICK.get(step, [])
        proc = subprocess.run(argv, cwd=tmp_path, env=cpu_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        ran.append((step, proc.stdout))
    assert _in_order([s for s, _ in ran]) == ORDER
    out = dict(ran)
    assert "bits_per_byte" in out["evaluate"] or "bits/byte" in out["evaluate"], out["evaluate"]
    prompt = "It is a truth universally acknowledged"
    assert out["generate"].startswith(f"=== prompt: {prompt!r}\n{prompt}"), out["generate"]
    valid = [json.loads(line)["text"] for line in (REPO_ROOT / "data/sample/valid.jsonl").open()]
    assert (tmp_path / "runs/eq/valid.txt").read_text() == "".join(t + "\n" for t in valid)
    record = json.loads((tmp_path / "runs/m2/export/tokenizer_info.json").read_text())
    assert record["kind"] == "bitstream" and record["model_file"] == "bitstream.json"
