"""Published numbers a study puts beside its own: `references:` in a study file.

    references:
      - arm: vanilla                      # the study's arm it stands beside
        dataset: yahoo                    # optional: only that dataset / model label of the study
        source: "He et al. 2019, Table 2"
        conventions: {iw_samples: 500, mi_pool: 32, mi_pool_kind: length_batch, token_unit: word, nll: iw}
        values: {nll: 328.6, kl: 0.0, mi: 0.0, au: 0}   # metric names of the result rows; split: test

`conventions` say how the published numbers were measured, so the report can mark a comparison whose
conventions differ from ours (K, the MI pool M and how it was formed, the token unit, and whether the NLL is the
importance-weighted estimate or the −ELBO) instead of hiding the difference. Unknown keys are errors.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class ReferenceConventions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    iw_samples: int | None = Field(None, ge=1, description="K of the published IW NLL")
    mi_pool: Union[int, Literal["dataset"], None] = Field(None, description="M of the MI estimator, or 'dataset'")
    mi_pool_kind: Literal["dataset", "block", "length_block", "length_batch"] | None = Field(
        None, description="how the MI pools were formed (eval.mi_pool_kind)")
    token_unit: Literal["word", "subword"] | None = None
    nll: Literal["iw", "elbo", "exact"] | None = Field(
        None, description="importance-weighted NLL, the −ELBO bound, or exact (a language model's log p(x))")


class Reference(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    arm: str
    dataset: str | None = None
    model: str | None = None
    split: Literal["valid", "test"] = "test"
    source: str = Field(..., min_length=1, description="paper and table")
    quoted_in: str | None = Field(None, min_length=1, description="where the number is quoted from, when it is not "
                                  "the source itself (e.g. another paper's table)")
    uncertain: str | None = Field(None, min_length=1, description="why the number is uncertain (sources disagree)")
    conventions: ReferenceConventions = ReferenceConventions()
    values: dict[str, float] = Field(..., min_length=1)
    note: str = ""


def load_references(study_text: str | None) -> tuple[list[Reference], list[str]]:
    """The references of a study file's text (as copied into its results folder), and a note per entry that no
    longer validates (the sweep validated them; a hand-edited copy may not)."""
    from pydantic import ValidationError

    from ablate.core import safe_yaml

    if not study_text:
        return [], []
    try:
        data, _ = safe_yaml.parse(study_text)
    except safe_yaml.YAMLRefused as error:
        return [], [f"study.yaml is not readable ({error.problem}); published numbers left out"]
    raw = data.get("references") if isinstance(data, dict) else None
    out, notes = [], []
    for i, entry in enumerate(raw if isinstance(raw, list) else []):
        try:
            out.append(Reference.model_validate(entry))
        except ValidationError as error:
            notes.append(f"references[{i}] left out: {error.errors()[0]['msg']}")
    return out, notes


def convention_mismatches(ref: ReferenceConventions, ours: dict[str, object]) -> list[str]:
    """Where the published conventions differ from ours ({'iw_samples': 100, 'mi_pool': 3761, ...}): one phrase
    each, e.g. 'K 500 vs ours 100'. Conventions the reference does not state are not compared."""
    out = []
    if ref.iw_samples is not None and ours.get("iw_samples") not in (None, ref.iw_samples):
        out.append(f"K {ref.iw_samples} vs ours {ours['iw_samples']}")
    if ref.mi_pool is not None:
        theirs = "dataset" if ref.mi_pool == "dataset" else int(ref.mi_pool)
        mine = "dataset" if ours.get("mi_pool_kind") == "dataset" else ours.get("mi_pool")
        if mine is not None and theirs != mine:
            out.append(f"MI pool M {theirs} vs ours {mine}")
    if ref.mi_pool_kind is not None and ours.get("mi_pool_kind") not in (None, ref.mi_pool_kind):
        out.append(f"MI pools formed by {ref.mi_pool_kind} vs ours {ours['mi_pool_kind']}")
    if ref.token_unit is not None and ours.get("token_unit") not in (None, ref.token_unit):
        out.append(f"token unit {ref.token_unit} vs ours {ours['token_unit']}")
    if ref.nll == "elbo":
        out.append("published NLL is the −ELBO bound, ours the IW estimate")
    return out
