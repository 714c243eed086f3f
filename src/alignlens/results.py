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
from typing import Any, Iterable

from alignlens import AlignlensError, __version__


def prepare_out_dir(path: str | Path, force: bool = False) -> Path:
    """Create `path`; refuse an existing non-empty folder unless `force` (then it is emptied)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AlignlensError(f"output {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise AlignlensError(f"output folder {path} is not empty; pass --force to overwrite it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
