"""ablate: a benchmark-and-ablation harness for posterior collapse in text VAEs."""

__version__ = "0.1.0"
