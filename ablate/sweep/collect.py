"""`ablate collect STUDY_FOLDER SOURCE...`: gather the results of a study that ran on several machines.

Workers on several machines share one ledger (an RDB storage) but each writes its attempts' files under its own
`results/<study>/`. Copy those folders to one machine (rsync, scp) and collect them into one study folder: every
attempt's row, curves and model file, deduplicated by cell and attempt (the ledger numbers attempts across
machines, so two machines never write the same attempt; a file already here is kept, and a different file of the
same name is reported as a conflict and left out). Then `results.parquet` is rewritten and `ablate report` reads the
whole study. Folders in the older `runs/` layout are read too.
"""

from __future__ import annotations

import filecmp
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ablate.results.layout import RESULT_NAME, RunFiles, StudyFolder


@dataclass
class Collected:
    copied: int = 0  # attempts whose files were copied here
    present: int = 0  # attempts already here (identical)
    conflicts: list[Path] = field(default_factory=list)  # a different file of an attempt already here
    refused: list[tuple[Path, str]] = field(default_factory=list)  # not a result row ablate wrote, or a link


def collect(target: Path, sources: list[Path]) -> Collected:
    """Copy every attempt of each source study folder that `target` lacks (see the module docstring)."""
    from ablate.core.config import ConfigError
    from ablate.results.safe_files import check_writable
    from ablate.results.rows import check_row_file, write_results_table

    layout = StudyFolder(target)
    if not layout.study_json.exists():
        raise ConfigError(f"{target}: not a study folder (no study.json); collect into the folder `ablate sweep` "
                          "wrote on this machine")
    for source in sources:
        if not StudyFolder(source).row_folders():
            raise ConfigError(f"{source}: no rows/ (or runs/) folder: not a study's results folder")
        if source.resolve() == target.resolve():
            raise ConfigError(f"{source}: the target itself; give the other machines' copies")
    check_writable(target, "STUDY_FOLDER")
    done = Collected()
    for source in sources:
        for rows in StudyFolder(source).row_folders():
            for row in sorted(rows.glob("*.parquet")):
                if not RESULT_NAME.match(row.name):
                    continue
                theirs = RunFiles.of(row)
                ours = layout.run_files(row.name.removesuffix(".parquet"))
                links = [p for p in (theirs.row, theirs.curves, theirs.model, ours.row, ours.curves, ours.model)
                         if p.is_symlink()]
                problem = f"{links[0]} is a symbolic link" if links else check_row_file(theirs.row)
                if problem:  # files are data: a row that is not ours is never copied in
                    done.refused.append((theirs.row, problem))
                    continue
                if ours.row.exists():
                    if filecmp.cmp(ours.row, theirs.row, shallow=False):
                        done.present += 1
                    else:
                        done.conflicts.append(theirs.row)
                    continue
                for mine, other in ((ours.curves, theirs.curves), (ours.model, theirs.model), (ours.row, theirs.row)):
                    if other.exists() and not mine.exists():  # the row last: a reader never sees a row alone
                        mine.parent.mkdir(parents=True, exist_ok=True)
                        tmp = mine.with_name(f".{mine.name}.collect.tmp")
                        shutil.copyfile(other, tmp)
                        tmp.replace(mine)
                done.copied += 1
    write_results_table(target)
    return done
