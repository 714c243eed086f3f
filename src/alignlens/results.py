"""Writing results people can trust: atomic files, protected output folders, manifests.

Conventions follow lm-eval-harness: per-item JSONL, a summary JSON and a manifest; UTF-8 with
`ensure_ascii=False`; an existing non-empty output folder is never overwritten without `force`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from alignlens import AlignlensError, __version__


#: Every temporary file or folder alignlens creates starts with this (stale ones are removed).
TEMP_PREFIX = ".alignlens-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _honour_umask(path: Path, folder: bool = False) -> None:
    """mkstemp/mkdtemp (and some libraries, e.g. safetensors) create 0600/0700; give results the
    modes a plain open() would, for a folder to everything inside it."""
    mask = _umask()
    os.chmod(path, (0o777 if folder else 0o666) & ~mask)
    if folder:
        for p in path.rglob("*"):
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_path(path: str | Path, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` (a file, or a folder with `folder=True`); on success
    it is renamed onto `path` (replacing a file; a folder must not exist), on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _honour_umask(tmp, folder)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


# ---- output folders -------------------------------------------------------------------------

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
        """Swap the staged results in: old owned files out, new ones in, then drop the old ones."""
        stage, self._stage = self._stage, None
        if stage is None:
            return
        trash = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}old.", dir=self.path))
        for rel in self.owned:
            old = self.path / rel
            if old.exists() or old.is_symlink():
                (trash / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(old, trash / rel)
        for rel in self.owned:
            new = stage / rel
            if new.exists():
                (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(new, self.path / rel)
        left = [str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()]
        if left:  # a writer wrote a file outside `owned`: a bug, never silently lost
            raise AlignlensError(f"internal error: unlisted output files {left} kept in {stage}")
        _remove(stage)
        _remove(trash)
        for role in {rel.split("/")[0] for rel in self.owned if "/" in rel}:
            folder = self.path / role
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            write(fh)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_temps(folder: str | Path, max_depth: int = 2) -> list[Path]:
    """Remove temporaries (`TEMP_PREFIX*`) left in `folder` (and its subfolders, to `max_depth`)
    by a killed run. Returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(TEMP_PREFIX):
            _remove(p)
            removed.append(p)
        elif max_depth > 0 and p.is_dir() and not p.is_symlink():
            removed += clean_stale_temps(p, max_depth - 1)
    return removed


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write JSON (UTF-8, ensure_ascii=False, NaN -> null)."""
    _atomic_write(Path(path), lambda fh: fh.write(json.dumps(_clean(obj), ensure_ascii=False, indent=1) + "\n"))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Atomically write one JSON object per line."""
    def write(fh):
        for row in rows:
            fh.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")
    _atomic_write(Path(path), write)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise AlignlensError(f"missing results file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AlignlensError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def _clean(obj: Any) -> Any:
    """Make numpy/torch scalars and arrays JSON-able; NaN/inf become null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """Commit of the alignlens checkout this code runs from (None when not a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python and the packages results depend on."""
    out = {"python": platform.python_version(), "alignlens": __version__}
    for pkg in ("torch", "transformers", "transformer-lens", "peft", "numpy", "scipy", "matplotlib", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
