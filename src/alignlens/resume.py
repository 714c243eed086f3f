"""Interrupted and resumed `alignlens analyze` runs: what `--resume` may continue, and how a run
whose numbers fail a check leaves its output folder.

`check_resume` runs before any model loads: a resumed run must equal the uninterrupted one, so
it is refused (one line naming the difference and what to do) for another model, `--compare`,
option or torch thread count, and for task data that changed since the run started (each shard
records the hash of its data, `capture.shards.shard_data_hash`). Roles already finished are kept
as they are. `check_resume_model` adds the checks that need the loaded model (weights, dtype,
device). `refuse_interrupted` points a plain re-run at `--resume`. `FolderBefore` puts a folder
written directly (a new or empty one, or `--resume`) back as it was after a numbers-check failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignlens import AlignlensError
from alignlens.capture.shards import shard_data_hash, shard_mismatch, shard_path
from alignlens.config import AnalyzeConfig
from alignlens.plan import RunPlan
from alignlens.results import ANALYZE_FILES, ROLES, atomic_write_bytes, clean_stale_temps
from alignlens.results.io import _remove
from alignlens.results.manifest import task_hash
from alignlens.results.schema import AnalyzeFolder, read_analyze_folder, resume_command

_FLAG = {"base": "--model", "aligned": "--compare"}


def _show(value: Any) -> str:
    return "none" if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def run_differences(folder: AnalyzeFolder, specs: list[tuple[str, str]], config: AnalyzeConfig) -> list[str]:
    """How the roles and models `specs` ((role, model spec) pairs) and `config` differ from the
    run in `folder` (empty: the same run)."""
    saved, want = folder.models, dict(specs)
    diff = []
    if "aligned" in saved and "aligned" not in want:
        diff.append(f"it was run with --compare {saved['aligned']}")
    elif "aligned" in want and "aligned" not in saved and folder.records_models:
        diff.append("it was run without --compare")
    for role, spec in specs:
        if role in saved and saved[role] != spec:
            diff.append(f"it was run with model {saved[role]!r} ({_FLAG[role]}), not {spec!r}")
    mine = config.to_dict()
    for role, m in folder.manifests.items():
        names = config.resume_mismatch((m or {}).get("options", {})) if m is not None else []
        if names:
            diff.append("options differ from the saved run's (" + "; ".join(
                f"{n}: saved {_show(m['options'].get(n))}, given {_show(mine[n])}" for n in names) + ")")
            break
    return diff


def check_resume(out: Path, specs: list[tuple[str, str]], config: AnalyzeConfig, plan: RunPlan, *,
                 report: bool) -> tuple[dict[str, dict | None], set[str]]:
    """Check, before any model loads, that `specs` ((role, model spec) pairs) and `config` continue
    the analyze run in `out` exactly. `plan`: the data `config` resolves to (`plan.resolve_plan`).
    Returns each role's saved manifest (None: not started) and the roles already finished (kept as they are, not recomputed).

    Refused (AlignlensError, one line with what to do): nothing started in `out`; a finished run
    (nothing to resume, unless its report is missing and `report`; with other options: --force or
    another --out); another model, --compare or option; another torch thread count than the saved
    run's (float results depend on it); task data changed since the run started (a shard's data
    hash, or a finished role's task hash)."""
    folder = read_analyze_folder(out)
    if folder is None:
        raise AlignlensError(f"nothing to resume in {out}: no started analyze run there")
    diff = run_differences(folder, specs, config)
    if folder.finished:
        if diff:
            raise AlignlensError(
                f"cannot resume {out}: its analyze run is finished (nothing to resume), and {'; '.join(diff)}; to "
                "analyse with these options use --force (replaces its results) or another --out")
        if not report or (out / "report.pdf").is_file():
            raise AlignlensError(
                f"nothing to resume in {out}: its analyze run is finished; render its report again with "
                f"`{folder.report_command()} --force`, or run it again with --force or another --out")
    elif diff:
        raise AlignlensError(f"cannot resume {out}: {'; '.join(diff)}; resume with the run's own options "
                             f"(`{folder.resume_command()}`), or use --force to start again")
    saved = {role: folder.manifests.get(role) for role, _ in specs}
    done = {role for role, m in saved.items() if m is not None and m.get("status") != "running"}
    if len(done) < len(specs):  # something is computed again: it must match what is kept
        _check_threads(out, saved)
        _check_data(out, saved, done, config, plan)
    return saved, done


def _check_threads(out: Path, saved: dict[str, dict | None]) -> None:
    now = torch.get_num_threads()
    for m in saved.values():
        n = (m or {}).get("torch_threads")
        if isinstance(n, int) and n != now:
            raise AlignlensError(
                f"cannot resume {out}: it was run with --threads {n} (torch CPU threads) and this run has {now}; "
                f"resume with --threads {n} (float results differ in the last bits between thread counts)")


def _check_data(out: Path, saved: dict[str, dict | None], done: set[str], config: AnalyzeConfig, plan: RunPlan) -> None:
    """A finished role's task data (manifest `data.tasks.<task>.hash`) and every saved shard of an
    unfinished role (`shard_mismatch`) must be what this run reads now."""
    for role, m in saved.items():
        if m is None:
            continue
        if role in done:
            tasks = ((m.get("data") or {}).get("tasks") or {})
            for spec in {s.name: s for s in plan.tasks}.values():
                h = (tasks.get(spec.name) or {}).get("hash")
                if h is not None and h != task_hash(spec.folder):
                    raise AlignlensError(
                        f"cannot resume {out}: the data of task {spec.name} ({spec.folder}) changed since {out / role} "
                        "was computed; use --force to start again")
            continue
        for e in plan:
            path = shard_path(out / role / "activations", e.spec.name, e.lang)
            if path.is_file():
                why = shard_mismatch(path, shard_data_hash(e.spec, e.lang, e.items), [it.index for it in e.items],
                                     config.lens_prompts)
                if why is not None:
                    raise AlignlensError(f"cannot resume {out / role}: {why}; use --force to start again")


def check_resume_model(saved: dict | None, model: Any, run_dir: Path) -> None:
    """After loading: the model (a `LoadedModel`) has the saved run's weights (hash), dtype and
    device type, so the resumed shards equal the uninterrupted run's."""
    m = (saved or {}).get("model") or {}
    h = m.get("hash")
    if h is not None and model.hash is not None and h != model.hash:
        raise AlignlensError(f"cannot resume {run_dir}: the model's weights changed since it was started "
                             f"(hash {model.hash[:12]}, saved {h[:12]}); use --force to start again")
    dtype = str(model.dtype).replace("torch.", "")
    if m.get("dtype") and m["dtype"] != dtype:
        raise AlignlensError(f"cannot resume {run_dir}: it was run in {m['dtype']} and this run loads the model in "
                             f"{dtype}; resume with --dtype {m['dtype']}")
    if m.get("device"):
        kind = torch.device(m["device"]).type
        if kind != torch.device(model.device).type:
            raise AlignlensError(f"cannot resume {run_dir}: it was run on {kind} and this run on "
                                 f"{torch.device(model.device).type}; resume with --device {kind}")


def refuse_interrupted(out: Path, command: str) -> None:
    """Refuse to start a new run (without --force) over an interrupted analyze run in `out`,
    pointing at --resume (`command`: the refused command line, if known)."""
    folder = read_analyze_folder(out)
    if folder is None or folder.finished:
        return
    what = ", ".join(folder.unfinished) or "the comparison"
    again = resume_command(command, out) if command else folder.resume_command()
    raise AlignlensError(f"output folder {out} holds an interrupted analyze run ({what} not finished): continue it "
                         f"with `{again}`, or pass --force to start over (its finished work is discarded)")


@dataclass
class FolderBefore:
    """alignlens's files in an output folder before a run writes there directly (a new or empty
    folder, or --resume), to put the folder back as it was when the run's numbers fail a check
    (exit 3: nothing is written). `created`: the outermost folder of the path that did not exist."""

    out: Path
    created: Path | None = None
    paths: set[Path] = field(default_factory=set)
    manifests: dict[Path, bytes] = field(default_factory=dict)

    @classmethod
    def take(cls, out: Path) -> "FolderBefore":
        out = Path(out).absolute()
        before = cls(out)
        p = out
        while not p.exists() and p != p.parent:
            before.created, p = p, p.parent
        for rel in ANALYZE_FILES + ROLES:
            q = out / rel
            if q.exists():
                before.paths.add(q)
                if q.is_dir() and rel not in ROLES:
                    before.paths.update(q.rglob("*"))
        for role in ROLES:
            m = out / role / "manifest.json"
            if m.is_file():
                before.manifests[m] = m.read_bytes()
        return before

    def restore(self) -> None:
        """Remove what the run added under alignlens's own paths, put the manifests back, and
        remove the folders the run created (when empty)."""
        for rel in ANALYZE_FILES:
            q = self.out / rel
            if not (q.exists() or q.is_symlink()):
                continue
            if q not in self.paths:
                _remove(q)
            elif q.is_dir():
                for r in sorted(q.rglob("*"), reverse=True):
                    if r not in self.paths:
                        _remove(r)
        for path, payload in self.manifests.items():
            atomic_write_bytes(path, payload)
        clean_stale_temps(self.out)
        for role in ROLES:
            q = self.out / role
            if q.is_dir() and q not in self.paths and not any(q.iterdir()):
                q.rmdir()
        if self.created is not None:
            q = self.out
            while q.is_dir() and not any(q.iterdir()):
                q.rmdir()
                if q == self.created:
                    break
                q = q.parent
