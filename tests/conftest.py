import os

# Tests run on 2-core machines: keep every process single-threaded unless a test says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Session fixtures shared by the launcher tests (one reference run and one SLURM cluster per session).
pytest_plugins = ["launch_fixtures"]


@pytest.fixture
def repo_root():
    from distributed_helpers import REPO_ROOT

    return REPO_ROOT


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory):
    """Byte-tokenized shards of a slice of data/sample/{train,valid}.jsonl (small vocab: fast
    tiny models), made once per session by `python -m megacompress.data.preprocess`.
    Returns {"train": PREFIX, "valid": PREFIX}."""
    import itertools
    import subprocess
    import sys

    from distributed_helpers import REPO_ROOT, cpu_env

    out = tmp_path_factory.mktemp("sample_shards")
    prefixes = {}
    for split, docs in (("train", 24), ("valid", 6)):
        src = out / f"{split}.jsonl"
        with open(REPO_ROOT / "data" / "sample" / f"{split}.jsonl") as f:
            src.write_text("".join(itertools.islice(f, docs)))
        subprocess.run([sys.executable, "-m", "megacompress.data.preprocess", "--input", str(src),
                        "--output-prefix", str(out / split), "--tokenizer", "bytes", "--append-eod",
                        "--split-sentences"], check=True, env=cpu_env(), capture_output=True)
        prefixes[split] = str(out / f"{split}_text_document")
    return prefixes
