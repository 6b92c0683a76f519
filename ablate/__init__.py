"""ablate: a benchmark-and-ablation harness for posterior collapse in text VAEs."""

import os

# oneDNN keeps every primitive it creates, up to 1024 by default, each with its buffers. The output layer's products
# (ablate/models/output_layer.py) take a new shape at almost every step (the last block of real positions), so
# with the default the cache grew training memory by ~330 MB in 40 steps of Li et al.'s PTB LSTM; with 16 entries
# it stays flat at the same speed. Read by oneDNN at its first primitive, so set before any is made; a value in
# the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

__version__ = "0.1.0"


def __getattr__(name: str):
    """`ablate.load_results(path)`: every result row under a folder as a pandas DataFrame (ablate.results.rows.read_results;
    imported on first use, so `import ablate` stays light)."""
    if name == "load_results":
        from ablate.results.rows import read_results

        return read_results
    raise AttributeError(f"module 'ablate' has no attribute {name!r}")
