"""`alignlens study run`: run every step of a study not finished with its current hash (design §2).

`run_study(source, out)`: validate the file (`spec.load_study`) and resolve it (`plan.resolve`)
before anything is written; take the lock on OUT (`study_lock`); copy the file to OUT/study.toml
and write OUT/plan.json; then each selected step in order (`--arm`/`--seed`: `Plan.select`):
finished with the same hash -> kept; another hash (stale) or `force` -> its alignlens-owned files
removed (`steps.clear_step`) and run again; interrupted (same hash) -> resumed (training from its
checkpoint, evaluation from its finished parts, analyses from their shards). Models are loaded once
per run of steps that share them; a trained model's `merged/` is removed once every step that
evaluates it has finished (unless `keep_merged`). When every step of the plan is finished,
OUT/study.json is written (`collect.write_study_json`).

Progress: a study line per step (steps done/total, the step's estimated time and the study's ETA
from the cost model, `plan.RATES` replaced by the speeds measured in this session), then the step's
own progress (training's bar or lines; evaluation's items), as a bar on a terminal or plain lines
when redirected (`alignlens.progress`). Ctrl-C/SIGTERM: the step keeps what it finished (training
saves a checkpoint) and `RunInterrupted` (exit 130/143) gives the exact command that continues.
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlens import AlignlensError, RunInterrupted, distributed
from alignlens.progress import LineProgress, _duration, progress_mode
from alignlens.results import TEMP_PREFIX, write_json
from alignlens.results.lock import LOCK_NAME as LOCK_FILE, FolderLock
from alignlens.results.writer import check_out_path
from alignlens.study import steps as S
from alignlens.study.plan import RATES, Plan, Step, eval_items, resolve, step_status
from alignlens.study.spec import load_study

PLAN_FORMAT = "alignlens.study.plan/1"
#: Files of OUT written by the study itself (besides the step folders).
STUDY_FILES = ("study.toml", "plan.json", "study.json", LOCK_FILE)


@dataclass
class RunSummary:
    """What `run_study` did: the steps it ran, those kept as finished, the plan's steps still not
    finished (outside the selection), and study.json when every step is finished."""

    out: Path
    ran: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    study_json: Path | None = None
    seconds: float = 0.0


@contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """Hold OUT's output lock (`results.lock.FolderLock`: one run per folder, dropped by the kernel
    when the process ends) for the block. Refused at once when another run holds it. Under torchrun
    rank 0 alone holds it (the other ranks write nothing of their own)."""
    from alignlens.distributed import main_process

    if not main_process():
        yield
        return
    lock = FolderLock.acquire(out)
    try:
        yield
    finally:
        lock.release()


def continue_command(source: str, out: Path, arm: str | None = None, seed: int | None = None,
                     threads: int | None = None) -> str:
    """The `alignlens study run` command that runs (or continues) these steps."""
    cmd = f"alignlens study run {shlex.quote(str(source))} --out {shlex.quote(str(out))}"
    if arm is not None:
        cmd += f" --arm {shlex.quote(arm)}"
    if seed is not None:
        cmd += f" --seed {seed}"
    if threads is not None:
        cmd += f" --threads {threads}"
    return cmd


def step_command(plan: Plan, out: Path, step: Step) -> str:
    """The command that runs one step (its arm and seed's cell, or the base model's steps)."""
    return continue_command(plan.study.source, out, step.arm or "base", step.seed)


def check_out(out: Path, force: bool) -> None:
    """Refuse OUT before anything is written: a dangerous path, a file, an unwritable place, or a
    non-empty folder that holds no study (unless `force`; files of others are never removed)."""
    check_out_path(out)
    if out.is_dir() and not force and not any((out / f).is_file() for f in ("plan.json", "study.toml")):
        other = [p.name for p in out.iterdir() if not p.name.startswith(TEMP_PREFIX) and p.name != LOCK_FILE]
        if other:
            raise AlignlensError(f"output folder {out} is not empty and holds no study (found {other[0]}); give a new "
                                 "or empty --out, or --force to write the study beside those files (they are kept)")


def plan_record(plan: Plan, out: Path) -> dict:
    """plan.json: the resolved steps with their hash, folder, cost and current status."""
    return {"format": PLAN_FORMAT, "study": plan.study.name, "file": plan.study.source,
            "steps": [{"name": s.name, "kind": s.kind, "arm": s.arm, "seed": s.seed, "model": s.model_key,
                       "folder": s.folder, "hash": s.hash, "status": step_status(out, s), "cost": s.cost,
                       "train_step": s.train_step} for s in plan.steps]}


def plan_rows(plan: Plan, out: Path | None = None) -> list[dict]:
    """The plan as `alignlens study check` shows it: per step its name, hash prefix, status in `out`
    ("new" without a folder) and estimated seconds (`plan.RATES`)."""
    return [{"step": s.name, "hash": s.hash[:12], "status": step_status(out, s) if out is not None else "new",
             "seconds": s.cost * RATES[s.kind], "folder": s.folder} for s in plan.steps]


class _Clock:
    """Study progress: a line per step with its estimate and the study's ETA from the cost model,
    the rates replaced by the speeds measured in this session."""

    def __init__(self, plan: Plan, todo: list[Step], enabled: bool, name: str) -> None:
        self.rates = dict(RATES)
        self.spent: dict[str, list[float]] = {}
        self.todo, self.name, self.done = list(todo), name, 0
        self.enabled = enabled and progress_mode(sys.stderr.isatty()) != "off"
        self.t0 = time.perf_counter()

    def seconds(self, step: Step) -> float:
        return step.cost * self.rates[step.kind]

    def start(self, step: Step, index: int) -> None:
        left = sum(self.seconds(s) for s in self.todo[index:])
        self.say(f"step {index + 1}/{len(self.todo)} {step.name} (est. {_duration(self.seconds(step))}; "
                 f"study eta {_duration(left)})")

    def finish(self, step: Step, seconds: float) -> None:
        secs, cost = self.spent.setdefault(step.kind, [0.0, 0.0])[0] + seconds, self.spent[step.kind][1] + step.cost
        self.spent[step.kind] = [secs, cost]
        if cost > 0:
            self.rates[step.kind] = secs / cost
            if step.kind == "eval":  # the variants run at the same speed
                self.rates["irrelevant"] = self.rates["eval"]
        self.done += 1

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"[{time.strftime('%H:%M:%S')}] study {self.name}: {text}", file=sys.stderr, flush=True)


@contextmanager
def _items_progress(enabled: bool) -> Iterator[Any]:
    """Evaluation progress (items): a rich bar on a terminal, plain lines when redirected, or None."""
    mode = progress_mode(sys.stderr.isatty()) if enabled else "off"
    if mode == "off" or not distributed.is_main():
        yield None
    elif mode == "lines":
        yield LineProgress()
    else:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            yield bar


def run_study(source: str | Path, out: str | Path, *, arm: str | None = None, seed: int | None = None,
              threads: int | None = None, force: bool = False, progress: bool = True, command: str | None = None,
              on_part: Callable[[str, str], None] | None = None,
              train_callback: Callable[[dict], None] | None = None) -> RunSummary:
    """Run the steps of study `source` (file or bundled name) into `out` (see the module docstring).
    `arm` ("base" for the base model) / `seed`: only those steps; `threads`: torch CPU threads;
    `force`: run the selected steps again even when finished (only alignlens's files are replaced);
    `command`: recorded in the manifests (default the `alignlens study run` command);
    `on_part(task, lang)` after each evaluated (task, language), `train_callback(record)` after each
    training step (tests use them to interrupt). Raises AlignlensError before anything is written
    for a bad file, selection or folder; RunInterrupted on Ctrl-C/SIGTERM."""
    from alignlens.model import resolve_device
    from alignlens.train.run import torch_threads

    t0 = time.perf_counter()
    study = load_study(source)
    plan = resolve(study)
    selection = plan.select(arm, seed)
    out = Path(out).expanduser()
    check_out(out, force)
    again = continue_command(study.source, out, arm, seed, threads)
    command = command or again
    summary = RunSummary(out)
    with torch_threads(threads), distributed.process_group(distributed.rank_device(resolve_device("auto"))):
        distributed.on_main(lambda: out.mkdir(parents=True, exist_ok=True))
        with (study_lock(out) if distributed.is_main() else _nothing()):
            _write_plan(plan, out, first=True)
            clock = _Clock(plan, [s for s in selection if force or step_status(out, s) != "finished"], progress,
                           study.name)
            runner = _Runner(plan, out, threads, progress, command, on_part, train_callback, clock)
            try:
                runner.run(selection, force, summary)
            except (KeyboardInterrupt, RunInterrupted) as exc:
                signum = signal.SIGTERM if getattr(exc, "exit_code", 130) == 143 else signal.SIGINT
                runner.release()
                _write_plan(plan, out)
                raise RunInterrupted(f"study {study.name} interrupted in step {runner.current or '-'} "
                                     f"({runner.kept_text()}); {clock.done} step(s) finished in this session; continue "
                                     f"with: {again}", signum) from None
            runner.release()
            _write_plan(plan, out)
            summary.missing = [s.name for s in plan.steps if step_status(out, s) != "finished"]
            if not summary.missing:
                from alignlens.study.collect import write_study_json

                summary.study_json = distributed.on_main(lambda: write_study_json(out))
    summary.seconds = time.perf_counter() - t0
    return summary


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _write_plan(plan: Plan, out: Path, first: bool = False) -> None:
    """OUT/plan.json (and, the first time in a run, the study file as run: OUT/study.toml)."""
    from alignlens.results import atomic_write_bytes

    def write() -> None:
        if first:
            atomic_write_bytes(out / "study.toml", plan.study.text.encode("utf-8"))
        write_json(out / "plan.json", plan_record(plan, out))
    distributed.on_main(write)


class _Runner:
    """Runs the selected steps in order, holding one loaded model at a time."""

    def __init__(self, plan: Plan, out: Path, threads: int | None, progress: bool, command: str,
                 on_part: Callable | None, train_callback: Callable | None, clock: _Clock) -> None:
        self.plan, self.out, self.threads, self.progress, self.command = plan, out, threads, progress, command
        self.on_part, self.train_callback, self.clock = on_part, train_callback, clock
        self.selected: dict[str, dict[str, list]] | None = None
        self.model: tuple[str, Any] | None = None
        self.current: str | None = None
        self.current_kind: str | None = None

    def run(self, selection: list[Step], force: bool, summary: RunSummary) -> None:
        index = 0
        for step in selection:
            status = step_status(self.out, step)
            if status == "finished" and not force:
                summary.kept.append(step.name)
                self._drop_merged_if_done(step)
                continue
            if status == "stale" or (force and status != "missing"):
                distributed.on_main(lambda: S.clear_step(self.out, step))
            self.current, self.current_kind = step.name, step.kind
            self.clock.start(step, index)
            index += 1
            started_iso = S.now_iso()
            t = time.perf_counter()
            distributed.on_main(lambda: (self.out / step.folder).mkdir(parents=True, exist_ok=True))
            S.write_record(self.out, step, "running", started_iso)
            self._run_step(step)
            seconds = time.perf_counter() - t
            S.write_record(self.out, step, "finished", started_iso, seconds)
            self.clock.finish(step, seconds)
            summary.ran.append(step.name)
            self.current = None
            self._drop_merged_if_done(step)

    def _run_step(self, step: Step) -> None:
        if step.kind == "train":
            self.release()
            S.run_train(step, self.plan, self.out, threads=self.threads, progress=self.progress,
                        command=self.command, callback=self.train_callback)
            return
        model = self._model(step)
        with _items_progress(self.progress) as bar:
            if step.kind == "analysis":
                S.run_analysis(step, self.plan, model, self.out, progress=bar, command=self.command)
            else:
                if self.selected is None:
                    self.selected = eval_items(self.plan.study)
                S.run_eval(step, self.plan, self.selected, model, self.out, progress=bar, command=self.command,
                           on_part=self.on_part)

    def _model(self, step: Step) -> Any:
        """The loaded model of an evaluation step (base model or trained one; `merged/` re-made if
        it was removed), reused by the next steps of the same model."""
        from alignlens.model import load_model

        source = step.model if step.train_step is None else str(self.out / self.plan.step(step.train_step).folder)
        if self.model is not None and self.model[0] == source:
            return self.model[1]
        self.release()
        if step.train_step is not None:
            S.ensure_merged(Path(source), step.model)
        self.model = (source, load_model(source))
        return self.model[1]

    def release(self) -> None:
        """Drop the loaded model (memory) before another loads or training starts."""
        if self.model is not None:
            self.model = None
            import gc

            gc.collect()

    def _drop_merged_if_done(self, step: Step) -> None:
        """Remove the trained model's `merged/` once every step evaluating it has finished."""
        if step.train_step is None or self.plan.study.keep_merged:
            return
        train = self.plan.step(step.train_step)
        if all(step_status(self.out, s) == "finished" for s in self.plan.consumers(train.name)):
            folder = self.out / train.folder
            if self.model is not None and self.model[0] == str(folder):
                self.release()
            S.remove_merged(folder)

    def kept_text(self) -> str:
        """What an interrupted step kept, in words."""
        return {"train": "training saved a checkpoint; the step resumes from it",
                "analysis": "finished (task, language) shards are kept",
                None: "nothing was running"}.get(self.current_kind, "finished (task, language) parts are kept")
