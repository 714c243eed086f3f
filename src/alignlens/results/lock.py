"""One run at a time per output folder: an exclusive lock (`fcntl.flock`) on `.alignlens-lock`
inside the folder, held while a run writes there.

A second run that wants the folder is refused at once (`probe` before anything is checked or
loaded, `FolderLock.acquire` when the run starts). The kernel drops the lock when its process
ends, so a lock file left by a killed run never blocks; a run that ends normally removes it.
The lock file is no result: `OutputFolder` does not count it as content.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from alignlens import AlignlensError

#: The lock file inside an output folder.
LOCK_NAME = ".alignlens-lock"


def _busy(folder: Path, lock_file: Path) -> AlignlensError:
    try:
        pid = lock_file.read_text(encoding="utf-8").strip()
    except OSError:
        pid = ""
    who = f" (process {pid})" if pid.isdigit() else ""
    return AlignlensError(f"another alignlens run{who} is writing to {folder} right now (it holds {lock_file}); "
                          f"wait until it ends or pick another --out")


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


class FolderLock:
    """The lock of one output folder, held by this process. `acquire` is re-entrant within a
    process (a command and the API function it calls may both take it); `release` drops it when
    the last holder releases, removes the lock file and any folder `acquire` created that is
    still empty (a refused or failed run leaves nothing behind)."""

    _held: dict[str, "FolderLock"] = {}

    def __init__(self, folder: Path, fd: int, created: list[Path]) -> None:
        self.folder, self.fd, self.created, self.count = folder, fd, created, 1

    @classmethod
    def acquire(cls, folder: str | Path) -> "FolderLock":
        """Create `folder` if needed and lock it; AlignlensError when another run holds the lock."""
        folder = Path(folder).expanduser()
        held = cls._held.get(_key(folder))
        if held is not None:
            held.count += 1
            return held
        created = []
        p = folder
        while not p.exists() and not p.is_symlink():
            created.append(p)
            p = p.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AlignlensError(f"cannot write to {folder}: {exc.strerror or exc}") from None
        lock_file = folder / LOCK_NAME
        try:
            fd = cls._lock(lock_file)
        except BaseException:
            _remove_empty(created)
            raise
        if fd is None:
            _remove_empty(created)
            raise _busy(folder, lock_file)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        lock = cls(folder, fd, created)
        cls._held[_key(folder)] = lock
        return lock

    @staticmethod
    def _lock(lock_file: Path) -> int | None:
        """An fd holding the exclusive lock of `lock_file` (created with the umask's mode), or None
        when another process holds it. Retries when the file was replaced between open and lock
        (a run that just ended removed it)."""
        for _ in range(20):
            try:
                fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise AlignlensError(f"cannot write to {lock_file.parent}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # locked a file that was removed meanwhile: try the new one
        raise AlignlensError(f"cannot lock {lock_file}: it keeps being replaced")

    def release(self) -> None:
        self.count -= 1
        if self.count > 0:
            return
        FolderLock._held.pop(_key(self.folder), None)
        try:
            (self.folder / LOCK_NAME).unlink(missing_ok=True)  # before unlocking: no one else holds it
        finally:
            os.close(self.fd)
            _remove_empty(self.created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that are empty; keep any that holds something."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return


def probe(folder: str | Path) -> None:
    """Refuse at once when another process holds `folder`'s lock (changes nothing; a lock this
    process holds is fine)."""
    folder = Path(folder).expanduser()
    lock_file = folder / LOCK_NAME
    if _key(folder) in FolderLock._held or not lock_file.is_file():
        return
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(folder, lock_file) from None
    finally:
        os.close(fd)  # closing drops a lock the probe took
