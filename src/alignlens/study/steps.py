"""Running one study step (design §2) with the existing machinery.

- **train**: `train.train` into the step folder; a checkpoint left by an interrupted session
  (`checkpoints/last.pt`) is resumed with the same resolved options (the trainer compares them).
- **eval / irrelevant**: per (task, language) `evaluate.evaluate_language` on the step's model (the
  irrelevant variant on `data.irrelevant_label_spec` with gold labels relabelled by position); each
  finished (task, language) is written atomically to `parts/<task>__<lang>.json` (its rows'
  probabilities exactly, as JSON floats, and the content-free probabilities), so an interrupted step
  continues at the next language on the same computational path; when all parts exist the step's
  predictions.jsonl, summary.json and manifest.json are written by `evaluate.write_eval` (with
  `results.manifest.make_manifest`) and `parts/` is removed.
- **analysis**: `pipeline.analyze_model` with saved activations (its per-(task, language) shards make
  it resumable).

A stale or forced step removes only what alignlens wrote in its folder (`clear_step`): the files its
manifest lists (`results.writer.read_owner`), its evaluation parts and its record (`plan.record_path`).
A trained model's `merged/` is re-made from the base model and `adapter/` with peft when a step needs
it and it was removed (`ensure_merged`); `remove_merged` drops it once every step that evaluates it
has finished (unless the study keeps it).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from alignlens import AlignlensError, data, distributed
from alignlens.results import EVAL_FILES, now_iso, read_json, write_json
from alignlens.results.writer import read_owner, remove_owned
from alignlens.study.plan import STEP_FORMAT, Plan, Step, record_path, variant_items, variant_task

PART_FORMAT = "alignlens.study.part/1"
PARTS = "parts"


# ---- step records ------------------------------------------------------------------------------------


def write_record(out: Path, step: Step, status: str, started: str, wall_s: float | None = None) -> None:
    """The step's record beside its folder (rank 0 only): its hash, status ("running"/"finished"),
    times and content."""
    rec = {"format": STEP_FORMAT, "step": step.name, "hash": step.hash, "status": status, "started": started,
           "finished": now_iso() if status == "finished" else None,
           "wall_s": None if wall_s is None else round(wall_s, 1), "content": step.content}
    distributed.on_main(lambda: write_json(record_path(out, step), rec))


def clear_step(out: Path, step: Step) -> None:
    """Remove what alignlens wrote in a step folder (a stale step or --force): the files its
    manifest lists, the evaluation parts and the step's record; anything else stays (also inside
    alignlens's own subfolders), and so do the folders it still fills."""
    folder = out / step.folder
    owner = read_owner(folder)
    remove_owned(folder, [*(owner.files if owner is not None else ()), *_part_files(folder)])
    record_path(out, step).unlink(missing_ok=True)


def _part_files(folder: Path) -> list[str]:
    """The evaluation parts in a step folder (relative paths), as `write_part` names them."""
    return [f"{PARTS}/{p.name}" for p in sorted((folder / PARTS).glob("*__*.json"))]


# ---- training ----------------------------------------------------------------------------------------


def run_train(step: Step, plan: Plan, out: Path, *, threads: int | None, progress: bool, command: str,
              callback: Callable[[dict], None] | None = None) -> Any:
    """Train (or resume training of) one arm and seed into its step folder; returns the TrainResult."""
    import dataclasses

    from alignlens.train import train

    folder = out / step.folder
    cfg = dataclasses.replace(plan.train_configs[step.name], threads=threads)
    resume = (folder / "checkpoints" / "last.pt").is_file()
    return train(cfg, step.model, folder, resume=resume, force=not resume, progress=progress, callback=callback,
                 command=command)


def ensure_merged(train_dir: Path, base_model: str) -> None:
    """Re-make `train_dir/merged` from the base model and `adapter/` (peft `merge_and_unload`, float32,
    with the base's tokenizer, as the trainer writes it) when it was removed."""
    if (train_dir / "merged" / "config.json").is_file():
        return
    if not (train_dir / "adapter").is_dir():
        raise AlignlensError(f"{train_dir}: neither merged/ nor adapter/ is there; re-run the training step "
                             "(alignlens study run ... --force for that arm and seed)")

    def remerge() -> None:
        import torch
        from peft import PeftModel

        from alignlens.model import load_hf
        from alignlens.train.checkpoint import save_folder
        from alignlens.train.run import load_training_tokenizer

        tokenizer = load_training_tokenizer(base_model)
        hf, _, _ = load_hf(base_model, torch.device("cpu"), torch.float32, tokenizer=tokenizer)
        merged = PeftModel.from_pretrained(hf, str(train_dir / "adapter")).merge_and_unload()
        merged.to("cpu", dtype=torch.float32)

        def save(folder: Path) -> None:
            merged.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        save_folder(train_dir / "merged", save)

    distributed.on_main(remerge)  # the other ranks wait, then load it


def remove_merged(train_dir: Path) -> None:
    """Drop `merged/` of a LoRA training step (its `adapter/` stays and re-makes it)."""
    if (train_dir / "adapter").is_dir() and (train_dir / "merged").is_dir():
        distributed.on_main(lambda: shutil.rmtree(train_dir / "merged"))


# ---- evaluation ----------------------------------------------------------------------------------------


def part_path(folder: Path, task: str, lang: str) -> Path:
    return folder / PARTS / f"{task}__{lang}.json"


def write_part(path: Path, step: Step, result: Any) -> None:
    """One finished (task, language) of an evaluation step: its LanguageResult as exact JSON floats."""
    write_json(path, {"format": PART_FORMAT, "hash": step.hash, "task": result.task, "lang": result.lang,
                      "labels": list(result.labels), "indices": [int(i) for i in result.indices],
                      "gold": [int(g) for g in result.gold], "probs": result.probs.tolist(),
                      "p_content_free": None if result.p_content_free is None else result.p_content_free.tolist()})


def read_part(path: Path, step: Step, items: list) -> Any:
    """A part written by `write_part` for this step's hash and these items, as a LanguageResult;
    None when it belongs to another hash or other items (it is then recomputed)."""
    from alignlens.evaluate import LanguageResult

    try:
        p = read_json(path)
    except (OSError, ValueError, AlignlensError):
        return None
    if not isinstance(p, dict) or p.get("hash") != step.hash or p.get("indices") != [it.index for it in items]:
        return None
    cf = p.get("p_content_free")
    return LanguageResult(p["task"], p["lang"], list(p["labels"]), list(p["indices"]), list(p["gold"]),
                          np.asarray(p["probs"], dtype=np.float64),
                          None if cf is None else np.asarray(cf, dtype=np.float64))


def run_eval(step: Step, plan: Plan, selected: dict[str, dict[str, list]], model: Any, out: Path, *,
             progress: Any = None, command: str = "", on_part: Callable[[str, str], None] | None = None) -> dict:
    """Evaluate `model` on every (task, language) of the study for the step's variant, reusing the
    parts an interrupted session finished; write the step's files. Returns the summary.
    `progress`: a rich-Progress-like object or None; `on_part(task, lang)` after each new part."""
    import torch

    from alignlens.evaluate import evaluate_language, write_eval
    from alignlens.results.manifest import make_manifest, ownership

    study = plan.study
    folder = out / step.folder
    cfg = study.eval_config()
    tasks = {data.load_task(t).name: t for t in study.tasks}
    total = sum(len(items) for per_lang in selected.values() for items in per_lang.values())
    bar = progress.add_task(step.name, total=total) if progress is not None else None
    torch.manual_seed(cfg.seed)
    started = now_iso()
    results = []
    for name, per_lang in selected.items():
        spec = variant_task(study, tasks[name], step.variant)
        for lang, base_items in per_lang.items():
            items = variant_items(study, base_items, step.variant)
            path = part_path(folder, spec.name, lang)
            result = distributed.broadcast_object(read_part(path, step, items) if path.is_file() else None)
            if result is None:
                if progress is not None:
                    progress.update(bar, description=f"{step.name} {spec.name} {lang}")
                result = evaluate_language(
                    model, spec, lang, items, batch_size=cfg.batch_size, prefix_cache=cfg.prefix_cache,
                    on_batch_done=(lambda n: progress.advance(bar, n)) if progress is not None else None)
                distributed.on_main(lambda: write_part(path, step, result))
                if on_part is not None:
                    on_part(spec.name, lang)
            elif progress is not None:
                progress.advance(bar, len(items))
            results.append(result)

    def finish() -> dict:
        manifest = make_manifest(model, cfg, command=command, started=started,
                                 extra={"world_size": distributed.world().size, "study": _study_note(step, study),
                                        **ownership("eval", EVAL_FILES)})
        summary = write_eval(folder, results, manifest, cfg)
        remove_owned(folder, _part_files(folder))
        return summary
    return distributed.broadcast_object(distributed.on_main(finish))


def run_analysis(step: Step, plan: Plan, model: Any, out: Path, *, progress: Any = None, command: str = "") -> dict:
    """`pipeline.analyze_model` into the step folder with saved activations (resumable by shards)."""
    from alignlens.pipeline import analyze_model

    folder = out / step.folder
    return analyze_model(model, plan.study.analyze_config(), folder, progress=progress, command=command,
                         extra_manifest={"study": _study_note(step, plan.study)})


def _study_note(step: Step, study: Any) -> dict:
    """What a step's manifest records about the study (`study` key)."""
    return {"name": study.name, "step": step.name, "hash": step.hash, "variant": step.variant,
            "arm": step.arm, "seed": step.seed}
