"""What a training run keeps on disk between sessions, and the output folder's policy.

- `TrainState`: the loop's counters and results so far (step, best/initial/last validation loss,
  elapsed time, tokens, the RNG state at the last step boundary, ...).
- `Checkpoint`: `TrainState` + trainable weights + optimizer + schedule + log offset, saved to
  `checkpoints/last.pt` and restored exactly (same weights as an uninterrupted run).
- `TrainLog`: `train_log.jsonl`, cut back to the checkpoint's offset on resume.
- The output folder: `check_out_dir` (no changes), `start_writing` (the first change: a forced
  run removes the files the previous run's manifest lists, `results.writer.read_owner`),
  `running_manifest` (manifest.json while the run works: which files are its own),
  `save_folder` (merged/ and adapter/).

Every file goes through `results.atomic_path` (temporaries beside the target, umask modes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from alignlens import AlignlensError
from alignlens.results import atomic_path, clean_stale_temps
from alignlens.results.io import _honour_umask, _remove, temp_prefix
from alignlens.results.manifest import git_commit, ownership
from alignlens.results.writer import OutputFolder, files_under, read_manifest, read_owner, remove_owned

FORMAT = "alignlens-train/1"

#: What a checkpoint (`checkpoints/last.pt`) holds, in this order.
CHECKPOINT_KEYS = ("format", "config", "model_spec", "data_digest", "trainable", "optimizer", "scheduler", "rng",
                   "log_offset", "state")



def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when empty)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---- state ----------------------------------------------------------------------------------


def rng_state() -> dict:
    """The state of every global RNG the loop uses (python, numpy, torch, CUDA if present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()` output."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """The loop's progress; everything a resumed session needs besides weights and optimizer.

    Losses are mean target-token cross-entropies (nats). `elapsed`: seconds of training loop in
    the earlier sessions (a checkpoint stores them including its own session). `rng`: the global
    RNG state at the last optimizer-step boundary (None until the loop starts)."""

    step: int = 0  # optimizer steps done
    best_val: float | None = None  # lowest validation loss after step 0
    best_step: int = 0
    initial_val: float | None = None  # validation loss of the base model (step 0)
    last_val: float | None = None
    last_eval_step: int = -1  # step of the last validation (-1: none yet)
    elapsed: float = 0.0
    tokens: int = 0  # tokens (prompt + target) of all optimizer steps so far
    started: str = ""  # UTC time the first session started
    sessions: int = 1
    train_loss: float | None = None  # of the last optimizer step
    #: one record per session, in order: its number, start time, command and runtime options
    #: (`config.RUNTIME_OPTIONS`), see `manifest.session_record`; empty in checkpoints saved before
    session_log: list[dict] = dataclasses.field(default_factory=list)
    rng: dict | None = None

    def to_checkpoint(self) -> tuple[dict, dict | None]:
        """(the checkpoint's `state` entry, its `rng` entry)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rng"}
        return fields, self.rng

    @classmethod
    def from_checkpoint(cls, state: dict, rng: dict | None) -> "TrainState":
        names = {f.name for f in dataclasses.fields(cls)} - {"rng"}
        return cls(**{k: v for k, v in state.items() if k in names}, rng=rng)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters that require grad, by name."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `trainable_state` output into `model` (AlignlensError when the names do not match)."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing or any(n not in params for n in state):
        raise AlignlensError("checkpoint does not match the model (different LoRA/full settings?)")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary beside `path` (results.TEMP_PREFIX, umask modes), renamed on success."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A `trainable_state` saved with `atomic_save` (e.g. `checkpoints/best.pt`)."""
    return torch.load(path, map_location="cpu", weights_only=False)


@dataclass
class Checkpoint:
    """One resumable point of a run (`checkpoints/last.pt`); see `CHECKPOINT_KEYS`.

    Under torchrun: `world_size` processes saved it (a resumed run must use as many: the global
    batch depends on it) and `rng_ranks[r]` is rank r's RNG state (LoRA dropout draws differ per
    rank); `state.rng` is rank 0's. With FSDP, `trainable` and `optimizer` are empty and
    `sharded` names the folders (torch.distributed.checkpoint, one file per rank) holding them:
    {"last": folder, "best": folder or None}, relative to the checkpoint's folder."""

    config: dict  # TrainConfig.to_dict()
    model_spec: str
    data_digest: str
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    log_offset: int  # bytes of train_log.jsonl written before this checkpoint
    state: TrainState
    world_size: int = 1
    rng_ranks: list[dict] | None = None
    sharded: dict | None = None

    def save(self, path: Path) -> None:
        state, rng = self.state.to_checkpoint()
        atomic_save({"format": FORMAT, "config": self.config, "model_spec": self.model_spec,
                     "data_digest": self.data_digest, "trainable": self.trainable, "optimizer": self.optimizer,
                     "scheduler": self.scheduler, "rng": rng, "log_offset": self.log_offset, "state": state,
                     "world_size": self.world_size, "rng_ranks": self.rng_ranks, "sharded": self.sharded}, path)

    @classmethod
    def load(cls, path: Path) -> "Checkpoint":
        """Read `path`; an unreadable or incomplete file is a one-line AlignlensError naming it."""
        from alignlens.train.config import TrainConfig

        try:
            raw = torch.load(path, map_location="cpu", weights_only=False)
            missing = [k for k in CHECKPOINT_KEYS if k not in raw]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            TrainConfig.from_dict(raw["config"])
            return cls(raw["config"], raw["model_spec"], raw["data_digest"], raw["trainable"], raw["optimizer"],
                       raw["scheduler"], raw["log_offset"], TrainState.from_checkpoint(raw["state"], raw["rng"]),
                       int(raw.get("world_size", 1)), raw.get("rng_ranks"), raw.get("sharded"))
        except Exception as exc:  # noqa: BLE001 - one clear line for the user
            raise AlignlensError(f"cannot resume from {path}: unreadable checkpoint ({first_line(exc)}); "
                                 f"start again with --force instead of --resume") from None

    def rng_for(self, rank: int) -> dict | None:
        """The RNG state rank `rank` had at this checkpoint (rank 0's for a one-process checkpoint)."""
        return self.rng_ranks[rank] if self.rng_ranks else self.state.rng


class TrainLog:
    """`train_log.jsonl`: one JSON record per line, flushed at once. `truncate_to`: on resume,
    drop what was written after the checkpoint (so no step appears twice)."""

    def __init__(self, path: Path, truncate_to: int | None = None):
        if truncate_to is not None and path.is_file():
            with path.open("r+b") as fh:
                fh.truncate(truncate_to)
        self.fh = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.fh.flush()

    def offset(self) -> int:
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()  # (closing twice is harmless)


class NoLog:
    """The log of ranks other than 0 under torchrun: they write nothing."""

    def write(self, record: dict) -> None:  # noqa: ARG002
        pass

    def offset(self) -> int:
        return 0

    def close(self) -> None:
        pass


# ---- the output folder ----------------------------------------------------------------------


def check_out_dir(out: Path, resume: bool, force: bool) -> Path | None:
    """Check the output folder without changing it (`results.writer.OutputFolder`: its path, no
    other run writing there; a fresh run: empty, or with `force` a training run's folder whose
    manifest lists the files to replace); returns the checkpoint to resume from (or None)."""
    OutputFolder(out, "train", force, resume=resume).check()
    last = out / "checkpoints" / "last.pt"
    if resume:
        if last.is_file():
            return last
        owner = read_owner(out)
        if owner is not None and (owner.kind != "train" or owner.role):
            raise AlignlensError(f"nothing to resume in {out}: it holds {owner.describe()}, not a training run")
        m, _ = read_manifest(out / "manifest.json")
        if owner is not None and m is not None and m.get("status") != "running":
            raise AlignlensError(f"{out} holds a finished training run; nothing to resume (retrain with --force instead of --resume)")
        raise AlignlensError(f"nothing to resume in {out}: no checkpoint ({last} missing); "
                             f"run without --resume to start")
    return None


def start_writing(out: Path, fresh: bool) -> None:
    """The first change to `out` (its lock is held): create it, remove stale temporaries and, for
    a fresh run (the folder was checked: empty, or `force`), the files the previous training run's
    manifest lists (nothing else: files alignlens did not write stay, inside checkpoints/,
    merged/ and adapter/ too)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(out)
        if fresh:
            folder = OutputFolder(out, "train", force=True)
            folder.check()  # again, under the lock
            remove_owned(out, folder.owned)
    except OSError as exc:
        raise AlignlensError(f"cannot write to {out}: {exc.strerror or exc}") from None


def listed_files(out: Path) -> set[str]:
    """The files a training run's manifest in `out` lists (an interrupted session's, on resume)."""
    owner = read_owner(out)
    return set(owner.files) if owner is not None and owner.kind == "train" else set()


def running_manifest(out: Path, files: set[str], *, command: str, model_spec: str, config: dict, started: str) -> None:
    """manifest.json while a training run works (`"status": "running"`, replaced by the finished
    run's `training_manifest`): alignlens's keys, the command, model and options, and the files
    the run has written so far (what a later `--force` may remove)."""
    from alignlens import __version__
    from alignlens.results import write_json

    write_json(out / "manifest.json", {
        "alignlens_version": __version__, "command": command, "format": FORMAT, "status": "running",
        "model": {"spec": model_spec}, "options": config, "git_commit": git_commit(), "started": started,
        **ownership("train", files)})


def save_folder(path: Path, save: Callable[[Path], None]) -> list[str]:
    """`save(tmp)` into a temporary folder beside `path`, then into place: renamed to `path`, or,
    when `path` exists (files a `--force` kept, or this run's from an interrupted finish), each
    new file moved over its namesake and other files kept. atomic_path-like: every file gets the
    modes a plain open() gives under the umask (safetensors writes 0600). Returns the files
    written, relative to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with atomic_path(path, folder=True) as tmp:
            save(tmp)
            files = sorted(files_under(tmp))
        return files
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), dir=path.parent))
    try:
        save(tmp)
        _honour_umask(tmp, folder=True)
        files = sorted(files_under(tmp))
        for rel in files:
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, path / rel)
    finally:
        _remove(tmp)
    return files


#: Largest safetensors file `write_safetensors_shards` writes (bytes; a bigger tensor gets a file of its own).
MAX_SHARD_BYTES = 4 << 30


def write_safetensors_shards(folder: Path, tensors: Iterable[tuple[str, torch.Tensor]],
                             max_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Write (name, tensor) pairs as HF-style safetensors into `folder` (a new, private folder such
    as `save_folder`'s): `model.safetensors` when they fit in one file, else
    `model-0000i-of-0000n.safetensors` and `model.safetensors.index.json`. Tensors are consumed
    one by one and at most one file's worth is held at a time. Returns the file names."""
    from safetensors.torch import save_file

    parts: list[str] = []
    weight_map: dict[str, str] = {}
    current: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal current, size
        if current:
            name = f"part-{len(parts):05d}.safetensors"
            save_file(current, str(folder / name), metadata={"format": "pt"})
            parts.append(name)
            weight_map.update(dict.fromkeys(current, name))
            current, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_bytes:
            flush()
        current[name] = tensor.contiguous()
        size += nbytes
        total += nbytes
    flush()
    if len(parts) == 1:
        names = {parts[0]: "model.safetensors"}
    else:
        names = {p: f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i, p in enumerate(parts)}
    for old, new in names.items():
        (folder / old).rename(folder / new)
    if len(parts) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return list(names.values())
