"""How many worker processes a sweep starts, and how many torch threads each gets.

`--jobs N` decides when given; else `$ABLATE_JOBS`; else the default: one worker per GPU when there are GPUs, and
on a CPU one worker per core, at most one per cell to run, and at most one per 2 GiB of available memory. On the
2-core development machine two one-thread workers ran 1.55× the cells per minute of one two-thread worker (cells of
≈ 47 s; 1.27× at ≈ 23 s; benchmarks/bench_sweep.py): small models use one thread per process better than two
threads in one. SQLite storage takes one process only, so its default is 1.
"""

from __future__ import annotations

import os

from ablate.core.config import ConfigError

JOBS_ENV = "ABLATE_JOBS"
MEMORY_PER_WORKER = 2 * 1024**3  # bytes: the Li et al. PTB cell's worker peaks at ≈ 1.6 GB


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_worker(jobs: int) -> int:
    """Torch threads of each of N workers so that N × threads ≤ cores."""
    return max(1, cores() // max(1, jobs))


def gpus() -> list[str]:
    """The visible CUDA devices' names (CUDA_VISIBLE_DEVICES entries, else indices); [] without CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        count = 0
    if count == 0:
        return []
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()][:count]
    return [str(i) for i in range(count)]


def jobs_from_environment() -> int | None:
    """`$ABLATE_JOBS` as a worker count, None when unset; a clear error when it is not a positive integer."""
    text = os.environ.get(JOBS_ENV, "").strip()
    if not text:
        return None
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ConfigError(f"${JOBS_ENV}={text!r}: not a worker count; set a positive integer, or unset it for the "
                          "default (one worker per core on a CPU)")
    return jobs


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_jobs(to_run: int | None, devices: list[str], single_process: bool = False) -> int:
    """The default worker count (module docstring): `to_run` cells waiting for a worker (None: open-ended, as a
    search asks for trials as it goes), `devices` the GPUs, `single_process` for storage only one process may use."""
    if single_process:
        return 1
    if devices:
        return len(devices)
    by_memory = available_memory()
    limit = cores() if by_memory is None else min(cores(), max(1, by_memory // MEMORY_PER_WORKER))
    return max(1, limit if to_run is None else min(limit, to_run))
