"""Output folders and the files of a run: which files alignlens owns, and the `--force` policy
(replace only those, and only once the new ones are complete)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignlens import AlignlensError

from alignlens.results.io import (TEMP_PREFIX, _honour_umask, _remove, atomic_path, clean_stale_temps,
                                  write_json, write_jsonl)

#: Files of one evaluated model (`alignlens eval`).
EVAL_FILES = ("predictions.jsonl", "summary.json", "manifest.json")
#: Files of one analysed model (`alignlens analyze`, OUT/base and OUT/aligned).
ANALYSIS_FILES = EVAL_FILES + ("similarity.json", "logit_lens.json", "neurons.json", "neurons.safetensors",
                                "activations")
ROLES = ("base", "aligned")
#: Everything `alignlens analyze` writes into its output folder.
ANALYZE_FILES = tuple(f"{role}/{f}" for role in ROLES for f in ANALYSIS_FILES) + (
    "comparison.json", "report.pdf", "report_figures", "report_tables")


def report_files(pdf_name: str) -> tuple[str, ...]:
    """What the report writes beside its PDF: the PDF and its figures and tables folders."""
    stem = Path(pdf_name).stem
    return (pdf_name, f"{stem}_figures", f"{stem}_tables")


def _writable_ancestor(path: Path) -> Path:
    p = path
    while not p.exists():
        p = p.parent
    return p


class OutputFolder:
    """An output folder and the `--force` policy: alignlens replaces only the files it writes
    (`owned`, relative paths of files or whole folders), never anything else, and only after the
    new results are complete (they are written to a hidden staging folder inside `path` first, then
    swapped in). A new or empty folder is written directly.

    Use: `check()` before loading a model; `stage = begin()`; write under `stage`; `commit()`.
    """

    def __init__(self, path: str | Path, owned: tuple[str, ...], force: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.owned = owned
        self.force = force
        self._stage: Path | None = None

    def check(self) -> None:
        """Refuse before anything is touched: a dangerous path, a file, a non-empty folder without
        `force`, an unwritable location."""
        resolved = self.path.resolve()
        for name, danger in (("the current folder", Path.cwd()), ("your home folder", Path.home()),
                             ("the root folder", Path("/"))):
            if resolved == danger.resolve():
                raise AlignlensError(f"refusing to write results into {name} ({resolved}); give --out a folder of its own")
        if self.path.exists() and not self.path.is_dir():
            raise AlignlensError(f"output {self.path} exists and is not a folder")
        if self.has_content() and not self.force:
            raise AlignlensError(f"output folder {self.path} is not empty; pass --force to replace the results "
                                 f"alignlens wrote there (other files are kept)")
        anc = _writable_ancestor(self.path)
        if not os.access(anc, os.W_OK | os.X_OK):
            raise AlignlensError(f"cannot write to {self.path}: {anc} is not writable")

    def has_content(self) -> bool:
        return self.path.is_dir() and any(p for p in self.path.iterdir() if not p.name.startswith(TEMP_PREFIX))

    def begin(self) -> Path:
        """Check, clean stale temporaries, create the folder; return where to write."""
        self.check()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(self.path)
            if self.has_content():
                self._stage = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}new.", dir=self.path))
                _honour_umask(self._stage, folder=True)
                return self._stage
        except OSError as exc:
            raise AlignlensError(f"cannot write to {self.path}: {exc.strerror or exc}") from None
        return self.path

    def abort(self) -> None:
        """Drop a staged run (the previous results stay as they were)."""
        if self._stage is not None:
            _remove(self._stage)
            self._stage = None

    def commit(self) -> None:
        """Swap the staged results in (`swap_in`: old owned files out, new ones in, then drop the old ones)."""
        stage, self._stage = self._stage, None
        if stage is None:
            return
        swap_in(self.path, stage, self.owned)
        left = [str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()]
        if left:  # a writer wrote a file outside `owned`: a bug, never silently lost
            raise AlignlensError(f"internal error: unlisted output files {left} kept in {stage}")
        _remove(stage)
        for role in {rel.split("/")[0] for rel in self.owned if "/" in rel}:
            folder = self.path / role
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def swap_in(dest: Path, stage: Path, owned: Sequence[str]) -> None:
    """Replace alignlens's files in `dest` by the new ones in `stage` (same relative paths `owned`,
    files or whole folders; `stage` is on the same filesystem, e.g. a staging folder inside `dest`).

    Every existing `dest/rel` is moved aside into a hidden folder in `dest`, every existing
    `stage/rel` renamed into place, then the old ones are dropped. Nothing outside `owned` is
    touched. If a rename fails (or the swap is interrupted), the new files already moved are put back
    into `stage` and the old ones restored, then the error is raised: `dest` is as it was."""
    trash = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}old.", dir=dest))
    moved_out: list[str] = []
    moved_in: list[str] = []
    drop_old = False
    try:
        for rel in owned:
            old = dest / rel
            if old.exists() or old.is_symlink():
                _move(old, trash / rel)
                moved_out.append(rel)
        for rel in owned:
            new = stage / rel
            if new.exists() or new.is_symlink():
                _move(new, dest / rel)
                moved_in.append(rel)
        drop_old = True
    except BaseException:
        drop_old = _undo_swap(dest, stage, trash, moved_in, moved_out)
        raise
    finally:
        if drop_old:  # else some old file could not be put back: it stays in `trash`
            _remove(trash)


def _undo_swap(dest: Path, stage: Path, trash: Path, moved_in: list[str], moved_out: list[str]) -> bool:
    """Put a failed `swap_in` back (new files to `stage`, old ones to `dest`); True if all went back."""
    ok = True
    for src, dst, rels in ((dest, stage, moved_in), (trash, dest, moved_out)):
        for rel in reversed(rels):
            try:
                _move(src / rel, dst / rel)
            except OSError:
                ok = False
    return ok


@contextmanager
def staged_swap(dest: Path, owned: Sequence[str]) -> Iterator[Path]:
    """Yield a hidden staging folder inside `dest` to write the new `owned` files into; when the
    block succeeds they get the umask's modes and replace the old ones in `dest` (`swap_in`). The
    staging folder is always removed: on a failure `dest` keeps its previous files, untouched."""
    stage = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}new.", dir=dest))
    try:
        yield stage
        for rel in owned:
            p = stage / rel
            if p.exists() and not p.is_symlink():
                _honour_umask(p, folder=p.is_dir())
        swap_in(dest, stage, owned)
    finally:
        _remove(stage)


def write_eval_files(run_dir: Path, predictions: list[dict], summary: dict, manifest: dict) -> None:
    """predictions.jsonl (one row per item), summary.json and manifest.json of one run."""
    write_jsonl(run_dir / "predictions.jsonl", predictions)
    write_json(run_dir / "summary.json", summary)
    write_json(run_dir / "manifest.json", manifest)


def write_analysis_files(run_dir: Path, similarity: dict, logit_lens: dict, neurons: dict,
                         neuron_tensors: dict[str, Any]) -> None:
    """similarity.json, logit_lens.json, neurons.json and neurons.safetensors of one analysed run."""
    from safetensors.torch import save_file

    write_json(run_dir / "similarity.json", similarity)
    write_json(run_dir / "logit_lens.json", logit_lens)
    write_json(run_dir / "neurons.json", neurons)
    with atomic_path(run_dir / "neurons.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in neuron_tensors.items()}, str(tmp))
