"""The spine: one run from a config — preflight, training, evaluation, the row — and a saved model read back."""
