"""Shared test set-up: offline, small thread count, tiny configs, paths to the optional reference data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the kernels ablate used before it measured: no timing in every test run (values do not depend on it, see
# tests/test_kernels.py, which measures), and no write to the user's cache
os.environ.setdefault("ABLATE_KERNELS", "default")
os.environ.setdefault("ABLATE_KERNEL_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                          f"ablate-test-kernels-{os.getpid()}.json"))

# one worker in the test process (the default on a CPU is one worker process per core: tests that mean several
# workers say --jobs, and tests/test_worker_count.py tests the default)
os.environ["ABLATE_JOBS"] = "1"  # whatever the developer's shell says

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_overrides(**extra: object) -> dict:
    """A run config small enough to train in a second or two on a CPU (embedded corpus)."""
    config = {
        "seed": 0,
        "data": {"name": "synthetic", "synthetic": {"n_train": 300, "n_valid": 60, "n_test": 60}},
        "model": {"name": "lstm", "emb_dim": 16, "enc_hidden": 32, "dec_hidden": 32, "nz": 4},
        "train": {"epochs": 1, "batch_size": 32},
        "eval": {"iw_samples": 5, "batch_size": 32},
    }
    for key, value in extra.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and a shared 2-core machine punishes oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def ptb_dir() -> Path:
    path = SHARED_DATA / "ptb"
    if not (path / "ptb.train.txt").exists():
        pytest.skip(f"reference data absent: {path} (see ../shared/data/README.md)")
    return path
