"""Provenance shared by every manifest alignlens writes (evaluation, analysis, training):
versions, the code's commit, torch's CPU thread count (float results depend on it), UTC times;
and what each one owns (`ownership`: the command kind and the files it wrote, which is all that
`--force` may replace, see `results.writer`)."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from typing import Any, Iterable

import torch

from alignlens import __version__

def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """Commit of the alignlens checkout this code runs from (None when not a git checkout)."""
    here = Path(__file__).resolve().parent.parent
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


def provenance(*, command: str, model: dict, data: dict, options: dict, seed: int | None, started: str,
               finished: str | None) -> dict[str, Any]:
    """The keys every alignlens manifest (evaluation, analysis, training) starts with, in this order."""
    return {"alignlens_version": __version__, "command": command, "model": model, "data": data,
            "options": options, "seed": seed, "versions": versions(), "git_commit": git_commit(),
            "torch_threads": torch.get_num_threads(),
            "started": started, "finished": finished}


def ownership(kind: str, files: Iterable[str]) -> dict[str, Any]:
    """The keys that say which files of its folder a manifest's run wrote: `kind` (eval, analyze,
    train) and `files` (sorted relative paths, the manifest itself included)."""
    return {"kind": kind, "files": sorted(set(files) | {"manifest.json"})}


def folder_manifest(kind: str, files: Iterable[str], *, command: str, started: str, extra: dict | None = None) -> dict:
    """A manifest for a whole output folder whose parts have manifests of their own (`alignlens
    analyze`'s OUT/manifest.json): version, command, commit, times, `extra`, then `ownership`."""
    return {"alignlens_version": __version__, "command": command, "git_commit": git_commit(), "started": started,
            "finished": now_iso(), **(extra or {}), **ownership(kind, files)}


def task_hash(folder: Path) -> str:
    """sha256 over a task folder's spec and item files (task.json, *.jsonl[.gz])."""
    import hashlib

    digest = hashlib.sha256()
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and (p.name == "task.json" or ".jsonl" in p.name):
            digest.update(p.name.encode())
            digest.update(p.read_bytes())
    return digest.hexdigest()


def eval_data(options: dict) -> dict[str, Any]:
    """The `data` section of an evaluation manifest: per task its folder, whether bundled, hash and
    languages; the limit; all languages in paper order."""
    from alignlens import data, languages

    info: dict[str, Any] = {"tasks": {}, "limit": options.get("limit")}
    for t in options.get("tasks", []):
        spec = data.load_task(t)
        info["tasks"][spec.name] = {
            "folder": str(spec.folder), "bundled": spec.name in data.BUNDLED_TASKS and t in data.BUNDLED_TASKS,
            "hash": task_hash(spec.folder), "languages": data.task_languages(spec, options.get("languages")),
        }
    langs = sorted({lang for v in info["tasks"].values() for lang in v["languages"]})
    info["languages"] = languages.paper_order(langs)
    return info


def make_manifest(model: Any, config: Any, *, command: str, started: str, extra: dict | None = None) -> dict:
    """manifest.json of an evaluation or analysis run: provenance (model, data, options, seed,
    versions, commit, times) and the languages the model was trained on. `model` is a LoadedModel."""
    from dataclasses import asdict

    opts = asdict(config) if hasattr(config, "__dataclass_fields__") else dict(config)
    out = provenance(command=command, model=model.describe(), data=eval_data(opts), options=opts,
                     seed=opts.get("seed"), started=started, finished=now_iso())
    out["trained_languages"] = list(model.info.get("trained_languages", []))
    if extra:
        out.update(extra)
    return out
