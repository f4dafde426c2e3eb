import os

# Tests run on 2-core machines: keep every process single-threaded unless a test says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def repo_root():
    from distributed_helpers import REPO_ROOT

    return REPO_ROOT
