"""On-disk primitives: atomic writes that honour the umask, JSON in and out (UTF-8, NaN -> null),
and cleanup of temporaries a killed run left behind."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from alignlens import AlignlensError

#: Every temporary file or folder alignlens creates starts with this (stale ones are removed).
TEMP_PREFIX = ".alignlens-tmp-"
#: An untagged temporary of another host (shared file systems) counts as stale after this long.
_FOREIGN_STALE_S = 24 * 3600


def temp_prefix(label: str) -> str:
    """Prefix of a new temporary for `label` (a file name, "new", "old", ...): `TEMP_PREFIX`, then
    the owner `pid@host`, so `clean_stale_temps` removes it only once its process is gone."""
    return f"{TEMP_PREFIX}{os.getpid()}@{socket.gethostname()}.{label}."


def _owner(name: str) -> tuple[int, str] | None:
    """(pid, host) of a temporary named by `temp_prefix`; None for an untagged one."""
    tag = name[len(TEMP_PREFIX):].split(".", 1)[0]
    pid, at, host = tag.partition("@")
    return (int(pid), host) if at and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(path: Path, locked: bool) -> bool:
    """Whether the temporary `path` is a killed run's leftover. One of this host's: when its owner
    process is gone (never this process's own). Another host's, or an untagged one (older
    versions, or a name every torchrun rank must agree on): only when the caller holds the lock of
    the folder it cleans (`locked`), and another host's only once `_FOREIGN_STALE_S` old."""
    owner = _owner(path.name)
    if owner is None:
        return locked
    pid, host = owner
    if host == socket.gethostname():
        return pid != os.getpid() and not _alive(pid)
    try:
        old = time.time() - path.lstat().st_mtime > _FOREIGN_STALE_S
    except OSError:
        return False
    return locked and old


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
    it is renamed onto `path` (replacing a file; a folder must not exist), on failure removed.
    An OSError that names no file, or only the temporary (e.g. a full disk), is raised again naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _honour_umask(tmp, folder)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        named = Path(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else None
        if named is None or named == tmp or tmp in named.parents:  # the user never sees the temporary
            target = path / named.relative_to(tmp) if named is not None and named != tmp else path
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    except BaseException:
        _remove(tmp)
        raise


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


def clean_stale_temps(folder: str | Path, max_depth: int = 2, *, locked: bool = True) -> list[Path]:
    """Remove temporaries (`TEMP_PREFIX*`) left in `folder` (and its subfolders, to `max_depth`)
    by a killed run; a live run's are never touched (`_stale`: their owner process is checked).
    `locked`: the caller holds `folder`'s output lock (`results.lock`), so untagged temporaries
    there are stale too; pass False for a folder it does not lock (a report's parent folder).
    Returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(TEMP_PREFIX):
            if _stale(p, locked):
                _remove(p)
                removed.append(p)
        elif max_depth > 0 and p.is_dir() and not p.is_symlink():
            removed += clean_stale_temps(p, max_depth - 1, locked=locked)
    return removed


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write JSON (UTF-8, ensure_ascii=False, NaN -> null)."""
    _atomic_write(Path(path), lambda fh: fh.write(json.dumps(to_jsonable(obj), ensure_ascii=False, indent=1) + "\n"))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Atomically write one JSON object per line."""
    def write(fh):
        for row in rows:
            fh.write(json.dumps(to_jsonable(row), ensure_ascii=False) + "\n")
    _atomic_write(Path(path), write)


def read_json(path: str | Path) -> Any:
    """A results JSON file; AlignlensError '<path>: missing', '<path>: cannot read (...)' or
    '<path>: not valid JSON (line N: ...)'."""
    path = Path(path)
    if not path.exists():
        raise AlignlensError(f"{path}: missing")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AlignlensError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AlignlensError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """One JSON object per line (AlignlensError naming file and line for a bad one)."""
    path = Path(path)
    if not path.is_file():
        raise AlignlensError(f"{path}: missing")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for no, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise AlignlensError(f"{path}:{no}: not valid JSON ({e.msg})") from None
    return rows


def to_jsonable(obj: Any) -> Any:
    """Make numpy/torch scalars and arrays JSON-able; NaN/inf become null."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj
