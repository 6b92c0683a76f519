"""A reproduction study's protocol card: every setting the paper or its code fixes, with its source, and where the
study differs, why. `protocol:` in a study file (required beside `references:`):

    protocol:
      paper: "Li et al. 2019, EMNLP (arXiv:1909.00868)"
      code: "bohanli/vae-pretraining-encoder @ 1f53e5c"
      settings:
        - topic: learning_rate
          arms: [vae_anneal]                     # optional: the arms it covers (default: every arm)
          paper: "SGD lr 1.0"                    # the setting in the paper's words
          expect: {train.lr: 1.0}                # optional: resolved-config keys every covered cell must have
          source: "text_anneal_fb.py:66 --lr default 1.0"
          reduced: "…"                           # optional: this study differs on purpose, and why

`ablate validate` (and every command that loads the study) checks each `expect` against each covered cell's
resolved config: a mismatch without `reduced:` is an error naming the setting, its source and the fix, so a study
edited away from its paper is caught in review. The report prints the card beside the published-vs-ours table.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What every card must cover (issue 22's list): a topic may hold several entries (one per arm group); a topic the
# paper leaves open still needs an entry saying so, with where that was checked.
TOPICS: dict[str, str] = {
    "data": "corpus, its version and splits",
    "vocabulary": "vocabulary and special tokens",
    "architecture": "encoder, decoder, latent size, how z enters",
    "initialisation": "parameter initialisation",
    "optimiser": "optimiser and its settings",
    "learning_rate": "learning rate",
    "lr_decay": "learning-rate decay rule",
    "batch": "batch size and batching",
    "epochs": "epochs and stopping rule",
    "annealing": "KL weight schedule",
    "dropout": "dropout",
    "free_bits": "free-bits threshold and mode",
    "iw_samples": "K of the importance-weighted NLL",
    "mi": "MI estimator and its pool",
    "au": "active-unit threshold",
    "selection": "which checkpoint is evaluated",
}


class Setting(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(..., description="one of protocol.TOPICS")
    paper: str = Field(..., min_length=1, description="the setting as the paper or its code fixes it")
    source: str = Field(..., min_length=1, description="the paper's words with section, or the authors' file and line")
    arms: list[str] | None = Field(None, description="the arms this entry covers (None: all)")
    expect: dict[str, Any] = Field(default_factory=dict, description="resolved-config keys → the paper's value")
    reduced: str | None = Field(None, min_length=1, description="why this study differs from the paper here")

    @field_validator("paper", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        """`paper: 0.5` reads as the text "0.5" (a YAML number where the card wants the paper's words)."""
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class Protocol(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    paper: str = Field(..., min_length=1)
    code: str | None = None
    settings: list[Setting] = Field(..., min_length=1)


def config_value(config: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key in a resolved config dict; a missing technique reads as (True, None) so
    that `expect: {techniques.free_bits: null}` says "no free bits"."""
    node: Any = config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif i >= 1 and parts[0] == "techniques" and isinstance(node, dict):
            return True, None  # the technique (or its field) is not on: "none"
        else:
            return False, None
    return True, node


def same_value(ours: Any, paper: Any) -> bool:
    """Equality as a config reads it: numbers by value (1 == 1.0), lists element-wise, everything else exactly."""
    if isinstance(ours, bool) or isinstance(paper, bool):
        return ours is paper or ours == paper and type(ours) is type(paper)
    if isinstance(ours, (int, float)) and isinstance(paper, (int, float)):
        return math.isclose(float(ours), float(paper), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(ours, list) and isinstance(paper, list):
        return len(ours) == len(paper) and all(same_value(a, b) for a, b in zip(ours, paper))
    return ours == paper


def card_rows(protocol: Protocol) -> list[dict[str, str]]:
    """The card as rows for the report: topic, arms, the paper's setting, ours (as the paper / reduced: why), source."""
    return [{"topic": s.topic, "arms": ", ".join(s.arms) if s.arms else "all",
             "paper": s.paper, "ours": f"reduced: {s.reduced}" if s.reduced else "as the paper",
             "checked": ", ".join(f"{k} = {v}" for k, v in s.expect.items()), "source": s.source}
            for s in protocol.settings]


def load_protocol(study_text: str | None) -> tuple[Protocol | None, list[str]]:
    """The card of a study file's text (as copied into its results folder), and a note if it no longer reads."""
    from pydantic import ValidationError

    from ablate.core import safe_yaml

    if not study_text:
        return None, []
    try:
        data, _ = safe_yaml.parse(study_text)
    except safe_yaml.YAMLRefused:
        return None, []
    raw = data.get("protocol") if isinstance(data, dict) else None
    if raw is None:
        return None, []
    try:
        return Protocol.model_validate(raw), []
    except ValidationError as error:
        return None, [f"protocol card left out: {error.errors()[0]['msg']}"]
