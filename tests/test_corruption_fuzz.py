"""Corruption fuzz: every artifact the project writes, mutated, read back by its real consumer.

Contract: for each artifact kind (token shard ``.bin/.idx/meta.json``, sentence sidecar,
checkpoint files + manifest, export directory, gist cache, bitstream shard + ``.docs``) and
each seeded mutation (truncate, extend, flip bytes at several offsets, same-size garbage,
swap two files, delete one), the consuming command either stops with a *named error* (a
user error: one line naming a file of the artifact; exit 2 from the CLI) or gives a result
*identical* to the unmutated artifact's. A different result is *SILENT*, any other
exception a *traceback*; both fail the test, which prints the table of artifact x mutation
-> outcome counts (``pytest -s`` shows it).

Cost. Consumers run in this process (a subprocess costs 3-8 s of imports on 2 cores), each
case on a fresh copy of the pristine artifact; then one real CLI run per artifact kind, on
a case the in-process run called a named error, checks exit status 2, exactly one
``error:`` line and no traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_helpers import REPO_ROOT, cpu_env
from test_resume_checks import LoadingEngine

from megacompress import cli
from megacompress.errors import EXIT_USAGE, OS_USER_ERRORS, UserError

SEED = 20240607
OUTCOMES = ("named", "identical", "SILENT", "traceback", "unnamed")
FAILING = ("SILENT", "traceback", "unnamed")
FILE_MUTATIONS = ("truncate_half", "truncate_zero", "truncate_minus1", "extend", "flip_start", "flip_middle",
                  "flip_end", "flip_random", "garbage", "delete")
SWAPS_PER_ARTIFACT = 3


USER_ERRORS = (UserError, *OS_USER_ERRORS)


@dataclass
class Artifact:
    """A pristine artifact: ``root`` (copied for every case), the ``files`` (relative to it) that
    are mutated, the in-process consumer (case root -> comparable result), the exception classes
    its CLI turns into one ``error:`` line, and that CLI (case root -> argv, or None)."""

    kind: str
    root: Path
    files: list[str]
    consume: Callable[[Path], object]
    user_errors: tuple[type[BaseException], ...]
    command: Callable[[Path], list[str]] | None = None


# ---------------------------------------------------------------------------- mutations

def mutate(root: Path, mutation: str, names: list[str], rng: random.Random) -> None:
    """Apply ``mutation`` to ``root/names[0]`` (``swap``: exchange the contents of two files)."""
    path = root / names[0]
    if mutation == "swap":
        other = root / names[1]
        tmp = path.with_name(path.name + ".swap")
        os.replace(path, tmp)
        os.replace(other, path)
        os.replace(tmp, other)
        return
    if mutation == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    n = len(data)
    if mutation.startswith("truncate"):
        data = data[:{"truncate_half": n // 2, "truncate_zero": 0, "truncate_minus1": max(n - 1, 0)}[mutation]]
    elif mutation == "extend":
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 17)))
    elif mutation == "garbage":
        data = bytearray(rng.randbytes(n))
    elif n:  # flips: XOR with a non-zero byte, so the byte always changes
        offsets = {"flip_start": [0], "flip_middle": [n // 2], "flip_end": [n - 1],
                   "flip_random": [rng.randrange(n) for _ in range(3)]}[mutation]
        for offset in offsets:
            data[offset] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


def cases(artifact: Artifact, rng: random.Random) -> list[tuple[str, list[str]]]:
    """(mutation, files) of every case: each file mutation on each file, plus seeded swaps."""
    out = [(m, [name]) for name in artifact.files for m in FILE_MUTATIONS]
    pairs = list(itertools.combinations(artifact.files, 2))
    out += [("swap", list(pair)) for pair in rng.sample(pairs, min(SWAPS_PER_ARTIFACT, len(pairs)))]
    return out


def names_the_artifact(message: str, root: Path, artifact: Artifact) -> bool:
    return str(root) in message or any(Path(name).name in message for name in artifact.files)


def consume_quietly(artifact: Artifact, root: Path):
    with warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")
        return artifact.consume(root)


def classify(artifact: Artifact, root: Path, expected) -> tuple[str, str]:
    """(outcome, detail) of running the consumer on the (mutated) copy ``root``."""
    try:
        result = consume_quietly(artifact, root)
    except artifact.user_errors as exc:
        message = str(exc)
        if names_the_artifact(message, root, artifact) and "\n" not in message:
            return "named", f"{type(exc).__name__}: {message}"
        return "unnamed", f"{type(exc).__name__}: {message}"
    except Exception as exc:  # noqa: BLE001 (anything else is a bug: it would print a traceback)
        return "traceback", f"{type(exc).__name__}: {exc}"
    return ("identical", "") if result == expected else ("SILENT", "result differs from the pristine one")


@contextlib.contextmanager
def quiet():
    """Consumers' progress bars and summaries off the test output."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def fresh_copy(artifact: Artifact, dest: Path) -> Path:
    shutil.copytree(artifact.root, dest)
    return dest


def object_digest(obj) -> str:
    """sha256 of a nest of dicts, lists, tensors, arrays and plain values."""
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, dict):
            for key in sorted(x, key=repr):
                h.update(repr(key).encode())
                walk(x[key])
        elif isinstance(x, (list, tuple)):
            h.update(f"[{len(x)}".encode())
            for item in x:
                walk(item)
        elif torch.is_tensor(x) or isinstance(x, np.ndarray):
            h.update(tensor_digest(x).encode())
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def digest_tree(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def tensor_digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(np.ascontiguousarray(t.detach().cpu().numpy() if torch.is_tensor(t) else t).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- pristine artifacts

DOCS = 6
DOC_CHARS = 1200
SEQ_LENGTH = 64


def sample_texts() -> list[str]:
    with open(REPO_ROOT / "data" / "sample" / "train.jsonl") as f:
        return [json.loads(line)["text"][:DOC_CHARS] for line in itertools.islice(f, DOCS)]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=cpu_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def shard_artifacts(base: Path) -> list[Artifact]:
    """Byte-tokenized shards with sentences; consumer: every sample of the training datasets
    (gpt kind, and document kind, which reads the sentence sidecar) and the sentence model
    splitting the corpus (as ``preprocess --sentence-model`` does)."""
    from megacompress.data.builder import DataConfig, build_datasets
    from megacompress.data.indexed import IndexedDataset
    from megacompress.data.sentences import SentenceSplitter
    from megacompress.data.tokenizers import build_tokenizer

    root = base / "shards"
    root.mkdir()
    src = base / "docs.jsonl"
    texts = sample_texts()
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    run([sys.executable, "-m", "megacompress.data.preprocess", "--input", str(src), "--output-prefix",
         str(root / "s"), "--tokenizer", "bytes", "--append-eod", "--split-sentences"])
    name = "s_text_document"
    tokenizer = build_tokenizer("bytes")
    # More than one epoch, so that every token is read (a chunk or window per SEQ_LENGTH tokens at most).
    samples = 2 * IndexedDataset(str(root / name)).num_tokens // SEQ_LENGTH + len(texts)

    def consume(case: Path) -> tuple:
        prefix = str(case / name)
        digests = []
        for kind in ("gpt", "document"):
            config = DataConfig(data_path=[prefix], kind=kind, split="1,0,0", cache_dir=str(case / f"cache-{kind}"))
            train, _, _ = build_datasets(config, tokenizer, SEQ_LENGTH, [samples, 0, 0])
            h = hashlib.sha256()
            for i in range(len(train)):
                for key, value in sorted(train[i].items()):
                    h.update(key.encode() + np.ascontiguousarray(value).tobytes())
            digests.append(h.hexdigest())
        splitter = SentenceSplitter.load(f"{prefix}.sentences.json")
        digests.append([splitter.split(t) for t in texts])
        return tuple(digests)

    errors = USER_ERRORS
    command = ["--set=tokenizer.kind=bytes", "--set=model.vocab_size=259", "--set=model.max_seq_len=32",
               "--set=model.hidden_size=32", "--set=model.num_heads=2", "--set=model.num_layers=1",
               "--set=model.ffn_hidden_size=64", "--set=schedule.train_steps=1", "--set=data.split=1,0,0",
               "--set=schedule.global_batch_size=2", "--set=schedule.micro_batch_size=2", "--set=eval.iters=1",
               "--set=logging.progress_bar=false"]

    def train_command(case: Path, *extra: str) -> list[str]:
        prefix = case / name
        return [sys.executable, "-m", "megacompress.train", *command, f"--set=data.data_path=[{prefix}]",
                f"--set=eval.data_path=[{prefix}]", f"--set=logging.run_dir={case / 'run'}", *extra]

    def sidecar_command(case: Path) -> list[str]:  # GPTHF training reads the sidecar, GPT training does not
        return train_command(case, "--config", str(REPO_ROOT / "configs" / "tiny_gpthf.yaml"),
                             "--set=model.num_layers=3")
    return [Artifact("shard", root, [f"{name}.bin", f"{name}.idx", f"{name}.meta.json"], consume, errors,
                     train_command),
            Artifact("sentence sidecar", root, [f"{name}.eos.bin", f"{name}.eos.idx", f"{name}.sentences.json"],
                     consume, errors, sidecar_command)]


def checkpoint_and_export(base: Path, shards: Path) -> list[Artifact]:
    """A 2-step tiny training run (ZeRO-2: model states + optimizer states + rng files);
    consumer of the checkpoint: the resume's checks and RNG load (`CheckpointManager.load`, the
    engine's own load stubbed: the export reads those files) and ``convert_checkpoint.py export``
    (manifest and every state file), compared by train state, RNG state and exported weights;
    of the export directory:
    ``load_pretrained`` + a forward pass and the directory's tokenizer (what ``generate`` does)."""
    from megacompress.data.tokenizers import model_tokenizer
    from megacompress.models import load_pretrained
    from megacompress.training.checkpoint import CheckpointManager, read_latest, read_manifest
    from megacompress.models.hf_llama import ConversionError
    from megacompress.training.convert import export

    prefix = shards / "s_text_document"
    run_dir = base / "run"
    settings = ["model.vocab_size=259", "model.max_seq_len=32", "model.hidden_size=32", "model.num_heads=2",
                "model.num_layers=1", "model.ffn_hidden_size=64", "tokenizer.kind=bytes",
                f"data.data_path=[{prefix}]", f"eval.data_path=[{prefix}]", "eval.iters=1", "data.split=1,0,0",
                "schedule.train_steps=2", "schedule.warmup_steps=1", "schedule.global_batch_size=2",
                "schedule.micro_batch_size=2", "logging.progress_bar=false", f"logging.run_dir={run_dir}",
                "parallel.zero_stage=2"]
    run([sys.executable, "-m", "megacompress.train", *[f"--set={s}" for s in settings]])
    ckpt = base / "checkpoints"
    shutil.copytree(run_dir / "checkpoints", ckpt)
    run([sys.executable, str(REPO_ROOT / "tools" / "convert_checkpoint.py"), "export", str(ckpt),
         str(base / "export")])

    tag = read_latest(ckpt)
    saved = read_manifest(ckpt / tag)

    def consume_checkpoint(case: Path) -> tuple:
        state, rng = CheckpointManager(case).load(LoadingEngine(), case, read_latest(case),
                                                  model_config=saved["model_config"], train_config=saved["train_config"])
        out = case.parent / (case.name + "-export")
        export(case, out)
        return state, object_digest(rng), digest_tree([out / "model.safetensors", out / "config.json"])

    probe = torch.arange(24).reshape(2, 12) * 37 % 259

    def consume_export(case: Path) -> tuple:
        model = load_pretrained(case).eval()
        with torch.no_grad():
            logits = model(probe).logits
        return tensor_digest(logits), model_tokenizer(str(case)).fingerprint()

    errors = USER_ERRORS + (ConversionError,)
    ckpt_files = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file())
    export_files = sorted(p.name for p in (base / "export").iterdir() if p.is_file())
    return [
        Artifact("checkpoint", ckpt, ckpt_files, consume_checkpoint, errors,
                 lambda case: [sys.executable, str(REPO_ROOT / "tools" / "convert_checkpoint.py"), "export",
                               str(case), str(case.parent / (case.name + "-cli-export"))]),
        Artifact("export", base / "export", export_files, consume_export, USER_ERRORS,
                 lambda case: [sys.executable, "-m", "megacompress.generate", "--model", str(case), "--prompt",
                               "Hello", "--max-new-tokens", "4", "--device", "cpu"]),
    ]


GIST_INSTRUCTIONS = ["Say hello.", "Add the numbers.", "Rewrite the sentence in the past tense.",
                     "Translate this, please, with care."]


class CliError(Exception):
    """A CLI run in-process ended with exit status 2; the message is what it printed on stderr."""


def run_main(main: Callable, argv: list[str]) -> None:
    """``cli.run(main, argv)`` as its process would run it: `CliError` for exit status 2."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = cli.run(main, argv)
        except SystemExit as exc:
            code = exc.code
    if code == EXIT_USAGE:
        raise CliError("\n".join(line.removeprefix("error: ") for line in stderr.getvalue().splitlines()
                                 if not line.startswith("warning: ")))
    assert code in (0, None), f"exit status {code}: {stderr.getvalue()[-2000:]}"


def gist_cache_artifact(base: Path) -> Artifact:
    """A k=2 gist cache of a random tiny gist model; consumer: ``gist generate --cache`` (in this
    process), compared by its answers."""
    from workers.gist_common import tiny_gist_model

    from megacompress import gist

    model_dir = tiny_gist_model(base / "gist-model", k=2)
    instructions, inputs = base / "gist-instructions.jsonl", base / "gist-inputs.jsonl"
    instructions.write_text("".join(json.dumps({"instruction": i}) + "\n" for i in GIST_INSTRUCTIONS))
    inputs.write_text("".join(json.dumps({"instruction": i, "input": "x"}) + "\n" for i in GIST_INSTRUCTIONS))
    cache = base / "gist-cache"
    with quiet():
        run_main(gist.main, ["compress", "--model", str(model_dir), "--instructions", str(instructions),
                             "--out", str(cache), "--device", "cpu"])

    def argv(case: Path) -> list[str]:
        return ["generate", "--model", str(model_dir), "--cache", str(case), "--inputs", str(inputs), "--out",
                str(case.parent / (case.name + ".jsonl")), "--max-new-tokens", "3", "--device", "cpu"]

    def consume(case: Path) -> str:
        run_main(gist.main, argv(case))
        return (case.parent / (case.name + ".jsonl")).read_text()

    files = sorted(p.name for p in cache.iterdir() if p.is_file())
    return Artifact("gist cache", cache, files, consume, (CliError,),
                    lambda case: [sys.executable, "-m", "megacompress.gist", *argv(case)])


def bitstream_artifact(base: Path) -> Artifact:
    """An Equal-Info bitstream shard made with a tiny random M1; consumer: decompress every
    document (``tools/decompress_corpus.py``), compared with the original text."""
    from workers.equal_info_m1 import save_tiny_m1

    from megacompress.methods.equal_info import compress as compress_mod
    from megacompress.methods.equal_info.decompress import decompress

    m1 = save_tiny_m1(base / "m1")
    root = base / "bitstream"
    src = base / "bitstream.jsonl"
    texts = [t[:200] for t in sample_texts()[:4]] + ["", "ünïcödé ✓"]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    with quiet():
        compress_mod.main(["--m1", str(m1), "--input", str(src), "--output-prefix", str(root / "b"),
                           "--partitions", "1"])
    name = "b_text_document"

    def consume(case: Path) -> list:
        out = case.parent / (case.name + ".jsonl")
        decompress(str(case / name), str(out), str(m1))
        return [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()]

    assert consume(root) == texts
    files = sorted(p.name for p in root.iterdir() if p.is_file())
    return Artifact("bitstream", root, files, consume, USER_ERRORS,
                    lambda case: [sys.executable, str(REPO_ROOT / "tools" / "decompress_corpus.py"), "--m1",
                                  str(m1), "--input-prefix", str(case / name), "--output",
                                  str(case.parent / (case.name + "-cli.jsonl"))])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> tuple[list[Artifact], list[str]]:
    """The pristine artifacts, and the builds that failed (each fails the test, the others still run)."""
    base = tmp_path_factory.mktemp("pristine")
    shards = shard_artifacts(base)
    built, broken = list(shards), []
    for build in (lambda: checkpoint_and_export(base, shards[0].root), lambda: [gist_cache_artifact(base)],
                  lambda: [bitstream_artifact(base)]):
        try:
            built += build()
        except Exception as exc:  # noqa: BLE001 (reported by the test)
            broken.append(f"{type(exc).__name__}: {str(exc)[:1500]}")
    return built, broken


# ---------------------------------------------------------------------------- the test

def format_table(counts: dict[tuple[str, str], Counter]) -> str:
    mutations = [*FILE_MUTATIONS, "swap"]
    kinds = list(dict.fromkeys(kind for kind, _ in counts))
    width = max(map(len, kinds)) + 2
    lines = [" " * width + " ".join(f"{m:>15}" for m in mutations),
             " " * width + " ".join(f"{'n/i/S/t/u':>15}" for _ in mutations)]
    for kind in kinds:
        cells = []
        for m in mutations:
            c = counts.get((kind, m), Counter())
            cells.append(f"{'/'.join(str(c[o]) for o in OUTCOMES):>15}")
        lines.append(f"{kind:<{width}}" + " ".join(cells))
    lines.append("n named error, i identical result, S SILENT difference, t traceback, u user error naming no file")
    return "\n".join(lines)


def test_every_mutation_gives_a_named_error_or_the_same_result(artifacts, tmp_path):
    artifacts, broken = artifacts
    rng = random.Random(SEED)
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    failures, named_case = [], {}
    for artifact in artifacts:
        expected = consume_quietly(artifact, fresh_copy(artifact, tmp_path / f"{artifact.kind}-pristine".replace(" ", "_")))
        for number, (mutation, names) in enumerate(cases(artifact, rng)):
            case = fresh_copy(artifact, tmp_path / f"{artifact.kind}-{number}".replace(" ", "_"))
            mutate(case, mutation, names, rng)
            outcome, detail = classify(artifact, case, expected)
            counts[artifact.kind, mutation][outcome] += 1
            if os.environ.get("FUZZ_VERBOSE"):
                print(f"{artifact.kind}: {mutation} {' <-> '.join(names)}: {outcome}: {detail[:300]}")
            if outcome in FAILING:
                failures.append(f"{artifact.kind}: {mutation} {' <-> '.join(names)}: {outcome}: {detail[:400]}")
            elif outcome == "named":
                named_case.setdefault(artifact.kind, (mutation, names, case))
    print("\n" + format_table(counts))
    for line in failures:
        print("FAIL", line)
    cli_problems = check_clis(artifacts, named_case, tmp_path)
    for line in cli_problems:
        print("CLI", line)
    for line in broken:
        print("BUILD FAILED", line)
    assert not failures and not cli_problems and not broken, (
        f"{len(failures)} failing cases, {len(cli_problems)} CLI problems, {len(broken)} artifacts not built")


def check_clis(artifacts: list[Artifact], named_case: dict, tmp_path: Path) -> list[str]:
    """One real CLI run per artifact kind on a case the in-process consumer called a named
    error (two at a time: 2 cores): exit 2, one ``error:`` line naming the artifact, no traceback."""
    jobs = []
    for artifact in artifacts:
        if artifact.command is None or artifact.kind not in named_case:
            continue
        mutation, names, case = named_case[artifact.kind]
        cli_case = fresh_copy(artifact, tmp_path / f"{artifact.kind}-cli".replace(" ", "_"))
        mutate(cli_case, mutation, names, random.Random(SEED))
        jobs.append((artifact, mutation, names, cli_case))
    problems = []
    for batch in (jobs[i:i + 2] for i in range(0, len(jobs), 2)):
        procs = [(job, subprocess.Popen(job[0].command(job[3]), env=cpu_env(), cwd=REPO_ROOT, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for job in batch]
        for (artifact, mutation, names, case), proc in procs:
            _, stderr = proc.communicate(timeout=240)
            errors = [line for line in stderr.splitlines() if line.startswith("error:")]
            if (proc.returncode != 2 or len(errors) != 1 or "Traceback" in stderr
                    or not names_the_artifact(errors[0], case, artifact)):
                problems.append(f"{artifact.kind}: {mutation} {' <-> '.join(names)}: exit {proc.returncode}, "
                                f"stderr: {stderr[-800:]!r}")
    return problems
