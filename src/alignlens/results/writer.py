"""Output folders and the files of a run: which files alignlens owns, and the `--force` policy
(replace only those, and only once the new ones are complete).

Ownership: every manifest alignlens writes records the command kind (`"kind"`: eval, analyze,
train, localize) and the relative paths of the files it wrote (`"files"`); `alignlens analyze` writes one
for the whole folder (`OUT/manifest.json`) beside those of its roles (`OUT/base`, `OUT/aligned`).
`read_owner` reads them; older alignlens manifests without a file list (recognised by their
`alignlens_version` and `git_commit` keys) stand for the file names alignlens wrote then
(`LEGACY_FILES`). `--force` replaces only such files, only in a folder of the same command.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from alignlens import AlignlensError

from alignlens.results import lock
from alignlens.results.io import (TEMP_PREFIX, _honour_umask, _remove, atomic_path, clean_stale_temps, temp_prefix,
                                  write_json, write_jsonl)

MANIFEST = "manifest.json"
#: The commands whose output folders alignlens tells apart (`"kind"` in a manifest).
KINDS = ("eval", "analyze", "train", "localize")

#: Files of one evaluated model (`alignlens eval`).
EVAL_FILES = ("predictions.jsonl", "summary.json", "manifest.json")
#: Files of one analysed model (`alignlens analyze`, OUT/base and OUT/aligned).
ANALYSIS_FILES = EVAL_FILES + ("similarity.json", "logit_lens.json", "neurons.json", "neurons.safetensors",
                                "activations")
ROLES = ("base", "aligned")
#: Everything `alignlens analyze` writes into its output folder.
ANALYZE_FILES = tuple(f"{role}/{f}" for role in ROLES for f in ANALYSIS_FILES) + (
    "comparison.json", "report.pdf", "report_figures", "report_tables")
#: What `alignlens train` writes besides merged/ and adapter/ (checkpoints/ is removed at the end
#: unless kept).
TRAIN_FILES = ("manifest.json", "train_log.jsonl", "checkpoints/last.pt", "checkpoints/best.pt")
#: What `alignlens localize` writes into its output folder (`parts/`: the finished (task, language)
#: parts of a run still working, removed when it ends).
LOCALIZE_FILES = ("patching.jsonl", "steering.jsonl", "dose.jsonl", "localize.json", "manifest.json", "report.pdf",
                  "report_figures", "report_tables", "parts")
#: Names of the files HF writes into a model folder (train's merged/) and a peft adapter folder.
MODEL_FOLDER_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                      "model.safetensors.index.json", "pytorch_model*.bin", "tokenizer*", "special_tokens_map.json",
                      "added_tokens.json", "chat_template.jinja", "vocab.json", "merges.txt")
ADAPTER_FOLDER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md")
_TRAIN_NAMES = (TRAIN_FILES + tuple(f"merged/{f}" for f in MODEL_FOLDER_FILES)
                + tuple(f"adapter/{f}" for f in ADAPTER_FOLDER_FILES))

#: What the manifests of older alignlens versions (no "files" list) stand for: glob patterns of
#: the files they wrote, relative to the manifest's folder ("role": OUT/base, OUT/aligned).
LEGACY_FILES = {
    "eval": EVAL_FILES,
    "role": ANALYSIS_FILES[:-1] + ("activations/*.safetensors",),
    "analyze": ("comparison.json", "report.pdf", "report_figures/*", "report_tables/*"),
    "train": _TRAIN_NAMES + ("checkpoints/*.dcp/**/*",),
    "localize": LOCALIZE_FILES[:5] + ("report_figures/*", "report_tables/*", "parts/*"),
}
#: Paths a new run of each kind writes, checked before it starts: each must be free or listed by
#: the previous run's manifest ("x/": a folder the run adds files to; globs: HF's file names).
PLANNED = {
    "eval": EVAL_FILES,
    "analyze": tuple(f"{role}/{f}" for role in ROLES for f in ANALYSIS_FILES[:-1]) + tuple(
        f"{role}/activations/" for role in ROLES) + ("manifest.json", "comparison.json", "report.pdf",
                                                      "report_figures/", "report_tables/"),
    "train": _TRAIN_NAMES + ("checkpoints/", "merged/", "adapter/"),
    "localize": LOCALIZE_FILES[:6] + ("report_figures/", "report_tables/", "parts/"),
}


def report_files(pdf_name: str) -> tuple[str, ...]:
    """What the report writes beside its PDF: the PDF and its figures and tables folders."""
    stem = Path(pdf_name).stem
    return (pdf_name, f"{stem}_figures", f"{stem}_tables")


# ---- what a folder holds ----------------------------------------------------------------------


def _scratch(name: str) -> bool:
    """Temporaries and the lock file: never results, never counted as content."""
    return name.startswith(TEMP_PREFIX) or name == lock.LOCK_NAME


def has_content(folder: Path) -> bool:
    """`folder` is a folder holding anything but alignlens's temporaries and lock file."""
    return folder.is_dir() and any(not _scratch(p.name) for p in folder.iterdir())


def files_under(folder: Path, rels: Iterable[str] = ("",)) -> set[str]:
    """Relative paths (to `folder`) of the files under `folder/rel` for each rel (a file or a
    folder, walked), without temporaries and lock files; symbolic links count as files."""
    out: set[str] = set()
    for rel in rels:
        start = folder / rel
        if start.is_symlink() or start.is_file():
            out.add(PurePosixPath(rel).as_posix())
            continue
        if not start.is_dir():
            continue
        for root, dirs, names in os.walk(start):
            dirs[:] = [d for d in dirs if not _scratch(d)]
            for name in names:
                if not _scratch(name):
                    out.add(Path(root, name).relative_to(folder).as_posix())
            for d in dirs:  # a symbolic link to a folder is listed, not walked
                if Path(root, d).is_symlink():
                    out.add(Path(root, d).relative_to(folder).as_posix())
    return out


def _glob_files(folder: Path, patterns: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for pattern in patterns:
        for p in folder.glob(pattern):
            if p.is_file() or p.is_symlink():
                out.add(p.relative_to(folder).as_posix())
    return out


def _safe_rel(rel: Any) -> str | None:
    """`rel` as a normalised relative path inside its folder, or None (absolute, '..', empty)."""
    if not isinstance(rel, str) or not rel.strip():
        return None
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or p.as_posix() in (".", ""):
        return None
    return p.as_posix()


def _inside(folder: Path, rel: str) -> bool:
    """`folder/rel` lies in `folder` once symbolic links in its parents are followed."""
    return (folder / rel).parent.resolve().is_relative_to(folder.resolve())


@dataclass(frozen=True)
class Owner:
    """The alignlens run a folder holds, from its manifest: `kind` (eval, analyze, train),
    `role` (base/aligned: the folder is one model's part of an analyze run), `files` (relative
    paths of the files it wrote there; older manifests: `LEGACY_FILES`), `manifest` (the file that
    says so) and whether it `listed` them itself."""

    kind: str
    role: str | None
    files: frozenset[str]
    manifest: Path
    listed: bool = True

    def describe(self) -> str:
        if self.role:
            return f"the {self.role} model's results of an alignlens analyze run"
        return f"an alignlens {self.kind} run"


def read_manifest(path: Path) -> tuple[dict | None, str]:
    """(the manifest at `path` if it is alignlens's, else None; why not). alignlens's manifests
    carry `alignlens_version` and `git_commit`; a `files` list must hold paths inside the folder."""
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None, f"{path} is not an alignlens manifest (unreadable, or not JSON)"
    if not isinstance(m, dict) or not {"alignlens_version", "git_commit"} <= m.keys():
        return None, f"{path} is not an alignlens manifest"
    files = m.get("files")
    if files is not None and (not isinstance(files, list) or any(_safe_rel(f) is None for f in files)):
        return None, f"{path} lists files outside its folder"
    return m, ""


def _kind(m: dict) -> tuple[str, str | None]:
    """(kind, role) of a manifest; older ones without "kind": a training format, an analyze role,
    else an evaluation."""
    role = m.get("role") if m.get("role") in ROLES else None
    kind = m.get("kind")
    if isinstance(kind, str):
        return kind, role if kind == "analyze" else None
    if str(m.get("format", "")).startswith("alignlens-train/"):
        return "train", None
    return ("analyze", role) if role else ("eval", None)


def _owner(folder: Path, m: dict) -> Owner:
    kind, role = _kind(m)
    if m.get("files") is not None:
        files, listed = {_safe_rel(f) for f in m["files"]}, True
    else:
        files, listed = _glob_files(folder, LEGACY_FILES["role" if role else kind]), False
    return Owner(kind, role, frozenset(f for f in files if _inside(folder, f)), folder / MANIFEST, listed)


def read_owner(folder: str | Path) -> Owner | None:
    """Which alignlens run `folder` holds, or None when no alignlens manifest says so.

    `folder/manifest.json` decides; an analyze folder also owns what its roles' manifests
    (`base/`, `aligned/`) list, and one without a top manifest (an interrupted run, or one from an
    older alignlens) is recognised by `base/manifest.json` (older: with the report and comparison
    files alignlens wrote then)."""
    folder = Path(folder)
    m, _ = read_manifest(folder / MANIFEST)
    top = _owner(folder, m) if m is not None else None
    if top is not None and (top.kind != "analyze" or top.role):
        return top
    files = set(top.files) if top else set()
    roles: dict[str, Owner] = {}
    for role in ROLES:
        rm, _ = read_manifest(folder / role / MANIFEST)
        if rm is not None and _kind(rm) == ("analyze", role):
            roles[role] = _owner(folder / role, rm)
            files |= {f"{role}/{f}" for f in roles[role].files}
    if top is None:
        if "base" not in roles:
            return None
        if not all(o.listed for o in roles.values()):
            files |= _glob_files(folder, LEGACY_FILES["analyze"])
        return Owner("analyze", None, frozenset(files), roles["base"].manifest, all(o.listed for o in roles.values()))
    return Owner("analyze", None, frozenset(files), top.manifest, top.listed)


def in_the_way(folder: Path, planned: Iterable[str], owned: frozenset[str] | set[str]) -> Path | None:
    """The first path in `folder` that a new run writing `planned` (files; "x/": a folder it adds
    files to; globs) would replace or build over although `owned` (what alignlens wrote there)
    does not list it: a file alignlens did not write, or a file where a folder must be."""
    for entry in planned:
        if any(c in entry for c in "*?["):
            for p in sorted(folder.glob(entry)):
                if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() not in owned:
                    return p
            continue
        is_folder = entry.endswith("/")
        parts = PurePosixPath(entry.rstrip("/")).parts
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            p = folder / rel
            if not (p.exists() or p.is_symlink()):
                break
            needs_folder = is_folder or i < len(parts)
            if rel not in owned and not (needs_folder and p.is_dir()):
                return p
    return None


# ---- the output folder ------------------------------------------------------------------------


def check_out_path(path: Path) -> None:
    """Refuse, changing nothing, an output path that cannot be a results folder: the current
    folder, $HOME or /, a dangling symbolic link, a file, a path under a file, an unwritable place."""
    resolved = path.resolve()
    for name, danger in (("the current folder", Path.cwd()), ("your home folder", Path.home()),
                         ("the root folder", Path("/"))):
        if resolved == danger.resolve():
            raise AlignlensError(f"refusing to write results into {name} ({resolved}); give --out a folder of its own")
    p = path
    while not p.exists():
        if p.is_symlink():
            raise AlignlensError(f"output {path}: {p} is a symbolic link to {os.readlink(p)}, which does not exist; "
                                 f"create its target or give --out another path")
        p = p.parent
    if p == path and not p.is_dir():
        raise AlignlensError(f"output {path} exists and is not a folder")
    if not p.is_dir():
        raise AlignlensError(f"cannot create output folder {path}: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise AlignlensError(f"cannot write to {path}: {p} is not writable")


class OutputFolder:
    """An output folder of one command (`kind`: eval, analyze, train, localize) and the `--force` policy.

    alignlens replaces only the files the folder's alignlens manifest lists (`read_owner`),
    only in a folder of the same command, never anything else, and only after the new results are
    complete: they are written to a hidden staging folder inside `path` first, then swapped in.
    A new or empty folder is written directly. One run at a time: `writing()` holds the folder's
    lock (`results.lock`) while the run works.

    Use: `check()` before loading a model; `with writing():` `stage = begin()`; write under
    `stage` (a manifest.json listing every file); `commit()`.
    """

    def __init__(self, path: str | Path, kind: str, force: bool = False, *, resume: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown output kind {kind!r}")
        self.path = Path(path).expanduser()
        self.kind = kind
        self.force = force
        self.resume = resume  # continue in place: nothing is replaced
        self.owned: frozenset[str] = frozenset()  # the previous run's files `--force` replaces (set by check)
        self._stage: Path | None = None

    def check(self) -> None:
        """Refuse before anything is touched: a bad path (`check_out_path`), a folder another run
        is writing to, a non-empty folder without `force`, one that holds no alignlens manifest or
        another command's results, or one where a file alignlens did not write is in the way."""
        check_out_path(self.path)
        from alignlens.distributed import main_process

        if main_process():  # under torchrun rank 0 holds the lock, which the other ranks would see as busy
            lock.probe(self.path)
        self.owned = frozenset() if self.resume or not self.has_content() else self._replaceable()

    def _replaceable(self) -> frozenset[str]:
        p = self.path
        owner = read_owner(p)
        if owner is None:
            _, why = read_manifest(p / MANIFEST)
            force = (" --force replaces only files an alignlens manifest there lists, so it cannot tell "
                     "alignlens's files from yours;") if self.force else ""
            raise AlignlensError(f"output folder {p} is not empty and holds no alignlens results ({why});{force} "
                                 f"pick another --out")
        if (owner.kind, owner.role) != (self.kind, None):
            raise AlignlensError(f"output folder {p} holds {owner.describe()} ({owner.manifest}); alignlens "
                                 f"{self.kind} does not replace it, with or without --force; pick another --out")
        if not self.force:
            more = " or --resume to continue it" if self.kind == "train" else ""
            raise AlignlensError(f"output folder {p} is not empty; pass --force to replace the results alignlens "
                                 f"wrote there (other files are kept){more}")
        blocker = in_the_way(p, PLANNED[self.kind], owner.files)
        if blocker is not None:
            raise AlignlensError(f"{blocker} is in the way of the new results and alignlens did not write it "
                                 f"({owner.manifest} does not list it); move it away or pick another --out")
        return owner.files

    def has_content(self) -> bool:
        return has_content(self.path)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the folder's lock for the block (rank 0 under torchrun; re-entrant in a process):
        another run wanting the folder is refused at once. The checks run again under the lock. A
        folder the lock created and nothing filled is removed afterwards."""
        from alignlens import distributed

        def take() -> lock.FolderLock:
            self.check()  # a bad path is refused as such, before the lock creates anything
            held = lock.FolderLock.acquire(self.path)
            try:
                self.check()
            except BaseException:
                held.release()
                raise
            return held

        held = distributed.on_main(take)
        try:
            yield
        finally:
            if held is not None:
                held.release()

    def begin(self) -> Path:
        """Check, clean stale temporaries, create the folder; return where to write."""
        self.check()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(self.path)
            if self.has_content():
                self._stage = Path(tempfile.mkdtemp(prefix=temp_prefix("new"), dir=self.path))
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
        """Swap the staged results in (`swap_in`: the previous run's listed files out, the new
        ones in, then drop the old ones; folders left empty by that are removed)."""
        stage, self._stage = self._stage, None
        if stage is None:
            return
        old = {rel for rel in self.owned if not (self.path / rel).is_dir() or (self.path / rel).is_symlink()}
        try:
            new = files_under(stage)
            m, _ = read_manifest(stage / MANIFEST)
            unlisted = sorted(new - {_safe_rel(f) for f in (m or {}).get("files") or []})
            if unlisted:  # a writer wrote a file its manifest does not list: a bug
                raise AlignlensError(f"internal error: output files {unlisted} are not listed in the new {MANIFEST}")
            blocker = in_the_way(self.path, sorted(new), old)
            if blocker is not None:
                raise AlignlensError(f"{blocker} is in the way of the new results and alignlens did not write it; "
                                     f"move it away or pick another --out (the new results were not kept)")
            swap_in(self.path, stage, sorted(old | new))
        finally:
            _remove(stage)
        prune_empty(self.path, old)


def remove_owned(folder: Path, files: Iterable[str]) -> None:
    """Delete the files (relative paths) alignlens wrote in `folder`, then the folders that this
    left empty; anything else stays (a listed path that is now a folder is not touched)."""
    files = list(files)
    for rel in files:
        p = folder / rel
        if (p.is_symlink() or p.is_file()) and _inside(folder, rel):
            p.unlink()
    prune_empty(folder, files)


def prune_empty(folder: Path, files: Iterable[str]) -> None:
    """Remove the folders between `folder` and each of `files` that are now empty, deepest first."""
    dirs = {folder / PurePosixPath(rel).parent.as_posix() for rel in files}
    every = set()
    for d in dirs:
        while d != folder and folder in d.parents:
            every.add(d)
            d = d.parent
    for d in sorted(every, key=lambda q: len(q.parts), reverse=True):
        if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            d.rmdir()


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
    trash = Path(tempfile.mkdtemp(prefix=temp_prefix("old"), dir=dest))
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
    block succeeds they get the umask's modes and replace the old ones in `dest` (`swap_in`), and
    an alignlens manifest in `dest` that lists its files lists them (`record_written`). The
    staging folder is always removed: on a failure `dest` keeps its previous files, untouched."""
    stage = Path(tempfile.mkdtemp(prefix=temp_prefix("new"), dir=dest))
    try:
        yield stage
        for rel in owned:
            p = stage / rel
            if p.exists() and not p.is_symlink():
                _honour_umask(p, folder=p.is_dir())
        swap_in(dest, stage, owned)
        record_written(dest, owned)
    finally:
        _remove(stage)


def record_written(folder: Path, rels: Sequence[str]) -> None:
    """After `rels` (files or folders) were replaced in `folder` (e.g. a report rendered beside
    results): the file list of the alignlens manifest there says so (what it listed under `rels`
    is replaced by what is there now), so a later `--force` knows them as alignlens's. Nothing
    happens without such a manifest."""
    m, _ = read_manifest(folder / MANIFEST)
    if m is None or m.get("files") is None:
        return
    kept = {f for f in m["files"] if not any(f == r or f.startswith(f"{r}/") for r in rels)}
    write_json(folder / MANIFEST, {**m, "files": sorted(kept | files_under(folder, rels))})


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
