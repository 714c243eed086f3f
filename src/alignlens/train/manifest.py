"""What a training run records and tells: the manifest of a finished run (`training_manifest`), the
entries of its session log (`session_record`, `first_command`) and the command that resumes it
(`resume_command`)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import torch

from alignlens.results import now_iso
from alignlens.results.manifest import provenance
from alignlens.train.checkpoint import FORMAT, TrainState
from alignlens.train.config import RUNTIME_OPTIONS, TrainConfig
from alignlens.train.examples import COUNT_KEYS, TrainData, data_source


def resume_command(out: Path, world_size: int) -> str:
    """The command that resumes a run in `out` launched with `world_size` processes."""
    args = f"train --out {shlex.quote(str(out))} --resume"
    if world_size == 1:
        return f"alignlens {args}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or world_size)
    nodes = f" --nnodes={world_size // local}" if local != world_size else ""
    return f"torchrun{nodes} --nproc_per_node={local} -m alignlens {args}"


def session_record(state: TrainState, config: TrainConfig, command: str) -> dict:
    """One entry of `TrainState.session_log` (and the manifest's `training.session_log`): this
    session's number, start time, command line and runtime options (`config.RUNTIME_OPTIONS`, the
    only options that may change between sessions)."""
    return {"session": state.sessions, "started": now_iso(), "command": command,
            **{name: getattr(config, name) for name in RUNTIME_OPTIONS}}


def first_command(state: TrainState, command: str) -> str:
    """The command that started the run: the first session's (`state.session_log`); `command` when
    no session was logged; "" when the log starts later (a checkpoint saved before sessions were
    logged)."""
    if not state.session_log:
        return command
    first = state.session_log[0]
    return first["command"] if first["session"] == 1 else ""


def _pair_format(config: TrainConfig) -> str:
    """The manifest's `data.format`: how one pair reads (X -> target, or the English copy control)."""
    from alignlens.languages import language_name

    if config.control == "copy":
        return ("prompt = <English question>\\nTranslate the input from English to English:\\n; target = <English "
                "question>" + (" + EOS" if config.append_eos else ""))
    target = language_name(config.target_language)
    return (f"prompt = <X question>\\nTranslate the input from <X> to {target}:\\n; target = <{target} question>"
            + (" + EOS" if config.append_eos else ""))


def training_manifest(config: TrainConfig, base_info: dict, data: TrainData, state: TrainState, *, total_steps: int,
                      steps_per_epoch: int, n_trainable: int, device: torch.device, elapsed: float,
                      best_weights: bool, batching: dict, command: str = "", world_size: int = 1,
                      parallel: str | None = None) -> dict:
    """`manifest.json` of a finished run: the provenance keys every alignlens manifest shares
    (`results.manifest.provenance`: model = the base model, data, options, seed, versions, commit,
    times) plus training's own. `command`: the one that started the run (`first_command`; a resumed
    run's sessions are in `training.session_log`, each with its command and runtime options).
    `elapsed`: training-loop seconds over all sessions; `best_weights`:
    the outputs hold the best-validation weights (else the final ones); `world_size`: processes
    (torchrun), `parallel`: "ddp", "fsdp" or None (one process); `batching`: `training.batching`
    (`trainer.batching_record`)."""
    counts = data.counts
    data_section = {
        "languages": data.languages, "per_language": config.per_language if config.resolved_languages() else None,
        "bundled": config.resolved_languages() if config.task is None else [], "files": list(config.data_files),
        **data_source(config),
        "n_train": len(data.train), "n_val": len(data.val),
        "n_cut_to_max_len": sum(c["truncated"] + c["dropped"] for split in counts.values() for c in split.values()),
        "max_len": config.max_len,
        "examples": {split: {lang: {k: c[k] for k in COUNT_KEYS} for lang, c in rows.items()}
                     for split, rows in counts.items()},
        "train_tokens": sum(len(e.ids) for e in data.train), "seed": config.seed,
        "format": _pair_format(config)}
    return {
        **provenance(command=first_command(state, command), model=base_info, data=data_section, options=config.to_dict(),
                     seed=config.seed, started=state.started, finished=now_iso()),
        "format": FORMAT,
        "base_model": base_info,  # the same as "model": the model that was fine-tuned
        "training": {"steps": state.step, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                     "trainable_params": n_trainable, "method": "full" if config.full else "lora",
                     "device": str(device), "world_size": world_size, "parallel": parallel,
                     "global_batch": config.batch_size * config.grad_accum * world_size,
                     "batching": batching,
                     "tokens_seen": state.tokens, "sessions": state.sessions, "session_log": list(state.session_log),
                     "wall_seconds": round(elapsed, 1),
                     "tokens_per_second": round(state.tokens / elapsed, 1) if elapsed > 0 else None},
        "initial_val_loss": state.initial_val,
        "best_val_loss": state.best_val,
        "best_step": state.best_step,
        "final_val_loss": state.last_val,
        "final_train_loss": state.train_loss,
        "weights": "best validation loss" if best_weights else "final (no validation split)",
        "outputs": {"merged": "merged", "adapter": None if config.full else "adapter",
                    "checkpoints": "checkpoints" if config.keep_checkpoints else None},
    }
