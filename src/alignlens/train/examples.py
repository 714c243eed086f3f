"""Training examples: question-translation pairs -> a seeded validation split -> token ids.

Pairs come from the task's own questions (`TrainConfig.task`, its `train_items`: same-task
alignment), else from the bundled SNLI question-translation set; `control="copy"` turns them into
English -> English copies (`data.english_copies`); `data_source` says which in the manifest.
`TrainConfig.target_language` (default en; with a task, any of its languages) is the language
translated into.

One example is `prompt = <question in X>\\nTranslate the input from X to <Target>:\\n` followed by
`target = <target-language question><eos>`: `tokenizer(prompt)` (BOS as the tokenizer adds it) +
`tokenizer(target, no specials)` + EOS (`append_eos`, so the model also learns where the
translation stops). Sequences longer than `max_len` are cut from the right (the prompt is kept:
"truncated"); a pair whose prompt alone fills `max_len` is "dropped". Counts per language and
split are printed and kept in the manifest; more than `max_drop_fraction` dropped in a language is
refused (before the model loads).

Batches are right-padded: with causal attention no real token can attend to a later pad, so no
attention mask is needed (positions are 0..n-1 for every row) and pad positions never enter the
loss. To keep padding small, `epoch_order` buckets the examples by length (each window of
`BUCKET_WINDOW` optimizer steps sorted, the steps shuffled): ~1% of the token slots are padding on
the default data instead of ~23% for random batches, without any packing of several examples into
one row (so no attention mask and no position resets are needed).
"""

from __future__ import annotations

import hashlib
import logging
import random
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from alignlens import AlignlensError
from alignlens.train.config import TrainConfig

log = logging.getLogger(__name__)

#: Per-language example counts from `encode`: total, kept (total - dropped), truncated (kept but cut
#: to max_len), dropped (the prompt alone fills max_len), longest and longest_prompt (tokens, uncut).
COUNT_KEYS = ("total", "kept", "truncated", "dropped", "longest", "longest_prompt")

#: {"train": {lang: counts}, "val": {lang: counts}}, counts keyed by `COUNT_KEYS`.
Counts = dict[str, dict[str, dict[str, int]]]


@dataclass(frozen=True)
class Example:
    """Token ids of prompt + target; ids[n_prompt:] are the target tokens."""

    ids: tuple[int, ...]
    n_prompt: int
    lang: str = ""


@dataclass(frozen=True)
class TrainData:
    """Everything the loop needs from the data: tokenised train/val examples and their provenance."""

    pairs: list  # all pairs (train and val), data.TranslationPair
    train: list[Example]
    val: list[Example]
    counts: Counts
    pad_id: int  # right padding (never in the loss)
    digest: str  # of the train examples (a resumed run must see the same data)

    @property
    def languages(self) -> list[str]:
        """Languages in order of first appearance (pairs without a language left out)."""
        return list(dict.fromkeys(p.lang for p in self.pairs if p.lang))


def load_pairs(config: TrainConfig) -> list:
    """All training pairs: the task's own questions (`task`: its `train_items`, X -> English) or
    else the bundled SNLI question translation (seeded sample), as English copies with
    `control="copy"`; then the user's files."""
    from alignlens import data

    pairs = []
    langs = config.resolved_languages()
    if config.task is not None:
        pairs += data.load_task_question_translation(config.task, langs, config.train_indices(),
                                                     config.per_language, seed=config.seed,
                                                     target=config.target_language)
    elif langs:
        pairs += data.load_question_translation(langs, config.per_language, seed=config.seed)
    if config.control == "copy":
        pairs = data.english_copies(pairs)
    for path in config.data_files:
        pairs += data.load_translation_file(path)
    return pairs


#: `data_source(config)["source"]` of each kind of training data.
SOURCE_TASK = "task questions"
SOURCE_BUNDLED = "bundled SNLI question-translation set"
SOURCE_FILES = "your files"


def data_source(config: TrainConfig) -> dict:
    """Which data trained the model, for the training manifest's `data` section:
    {"source", "task", "task_folder", "train_items", "control", "direction", "description"}.

    `source`: "task questions" (the task's own test-file questions, `train_items` of them: same-task
    for that task, cross-task for any other), "bundled SNLI question-translation set" (10,000 SNLI
    training questions, none of the snli test premises: cross-task for emotion and paws) or "your
    files", joined with " + " when files are added. `task`: the task's name (None for the bundled
    set). `control`: "copy" for the English -> English control, else None."""
    from alignlens import data
    from alignlens.languages import language_name

    langs = config.resolved_languages()
    task = folder = None
    parts = []
    if config.task is not None:
        spec = data.load_task(config.task)
        task, folder = spec.name, str(spec.folder)
        parts.append(SOURCE_TASK)
        what = f"{task} questions, items {config.train_items}"
        reading = f"same-task when reading {task}, cross-task for any other task"
    elif langs:
        parts.append(SOURCE_BUNDLED)
        what = "bundled SNLI question-translation set (SNLI training questions, none of the snli test premises)"
        reading = "same task as snli (other questions than its test items), cross-task for emotion, paws and others"
    else:
        what, reading = "", "task unknown (your files)"
    if config.data_files:
        parts.append(SOURCE_FILES)
        what = " + ".join(x for x in (what, "your files " + ", ".join(config.data_files)) if x)
    names = ", ".join(language_name(lang) for lang in langs)
    if config.control == "copy":
        direction = "English -> English (copy control)"
        pairs = f"English copies in the slots of {names}" if names else "English copies"
    else:
        target = language_name(config.target_language)
        direction = f"X -> {target}"
        pairs = f"{names} -> {target}" if names else "pairs as given"
    return {"source": " + ".join(parts), "task": task, "task_folder": folder,
            "train_items": config.train_items if task is not None else None, "control": config.control,
            "direction": direction, "description": f"{what}; {pairs}; {reading}"}


def split_pairs(pairs: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded validation split, per language (order of first appearance), `val_fraction` of each."""
    groups: dict[str, list] = {}
    for p in pairs:
        groups.setdefault(p.lang, []).append(p)
    rng = random.Random(seed)
    train, val = [], []
    for lang, group in groups.items():
        idx = list(range(len(group)))
        rng.shuffle(idx)
        n_val = round(len(group) * val_fraction)
        if val_fraction > 0 and n_val == 0 and len(group) >= 2:
            n_val = 1
        held = set(idx[:n_val])
        val += [group[i] for i in sorted(held)]
        train += [group[i] for i in range(len(group)) if i not in held]
    return train, val


def _lang_key(lang: str) -> str:
    return lang or "(no lang)"


def encode(tokenizer: Any, pairs: list, max_len: int, append_eos: bool = True
           ) -> tuple[list[Example], dict[str, dict[str, int]]]:
    """Tokenise pairs; returns (examples, counts per language, see `COUNT_KEYS`).

    An example longer than `max_len` tokens is cut from the right: the prompt is kept and the
    target loses its end (`truncated`). A pair whose prompt alone fills `max_len` keeps no target
    token and is left out (`dropped`)."""
    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise AlignlensError("the tokenizer has no EOS token (train with append_eos off)")
    prompts = tokenizer([p.input for p in pairs])["input_ids"] if pairs else []
    targets = tokenizer([p.answer for p in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    out: list[Example] = []
    counts: dict[str, dict[str, int]] = {}
    for p, pr, tg in zip(pairs, prompts, targets):
        c = counts.setdefault(_lang_key(p.lang), dict.fromkeys(COUNT_KEYS, 0))
        ids = list(pr) + list(tg) + ([eos] if append_eos else [])
        c["total"] += 1
        c["longest"] = max(c["longest"], len(ids))
        c["longest_prompt"] = max(c["longest_prompt"], len(pr))
        if len(ids) > max_len:
            ids = ids[:max_len]
            if len(ids) <= len(pr):
                c["dropped"] += 1
                continue
            c["truncated"] += 1
        c["kept"] += 1
        out.append(Example(tuple(ids), len(pr), p.lang))
    return out, counts


def check_drops(counts: Counts, max_len: int, max_fraction: float) -> None:
    """Refuse (AlignlensError) when, in any language, more than `max_fraction` of the examples
    (train and validation together) were dropped by `encode`. `counts`: {"train": .., "val": ..}."""
    langs = list(dict.fromkeys([*counts["train"], *counts["val"]]))
    zero = dict.fromkeys(COUNT_KEYS, 0)
    for lang in langs:
        tr, va = counts["train"].get(lang, zero), counts["val"].get(lang, zero)
        total, dropped = tr["total"] + va["total"], tr["dropped"] + va["dropped"]
        if total and dropped / total > max_fraction:
            need = max(tr["longest_prompt"], va["longest_prompt"]) + 1
            whole = max(tr["longest"], va["longest"])
            raise AlignlensError(
                f"training data, language {lang}: {dropped} of {total} examples would be dropped (train "
                f"{tr['dropped']}/{tr['total']}, val {va['dropped']}/{va['total']}) because their prompt alone "
                f"fills --max-len {max_len}, more than the allowed {max_fraction:.0%} (max_drop_fraction); "
                f"raise --max-len to at least {need} ({whole} keeps every {lang} example whole)")


def report_examples(counts: Counts, max_len: int, progress: bool) -> None:
    """One line per language: examples kept, truncated and dropped (logged; on stderr with progress)."""
    zero = dict.fromkeys(COUNT_KEYS, 0)
    for lang in dict.fromkeys([*counts["train"], *counts["val"]]):
        tr, va = counts["train"].get(lang, zero), counts["val"].get(lang, zero)
        truncated, dropped = tr["truncated"] + va["truncated"], tr["dropped"] + va["dropped"]
        line = (f"training data {lang}: {tr['kept']}/{tr['total']} train and {va['kept']}/{va['total']} val "
                f"examples kept; {truncated} truncated to --max-len {max_len} (target cut), {dropped} dropped "
                f"(prompt alone fills it)")
        log.info(line)  # (not a warning: logging's fallback handler would print it twice)
        if progress:
            print(line, file=sys.stderr, flush=True)


def data_digest(examples: list[Example]) -> str:
    """A short sha256 of the examples' token ids and prompt lengths."""
    h = hashlib.sha256()
    for e in examples:
        h.update(np.asarray(e.ids, dtype=np.int64).tobytes())
        h.update(str(e.n_prompt).encode())
    return h.hexdigest()[:16]


def build_data(config: TrainConfig, pairs: list, tokenizer: Any, progress: bool) -> TrainData:
    """Split `pairs` (`val_fraction`, `seed`), tokenise both splits, print their counts and refuse
    too many dropped examples (`max_drop_fraction`) or no training example at all."""
    train_pairs, val_pairs = split_pairs(pairs, config.val_fraction, config.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    train_ex, counts_train = encode(tokenizer, train_pairs, config.max_len, config.append_eos)
    val_ex, counts_val = encode(tokenizer, val_pairs, config.max_len, config.append_eos)
    counts = {"train": counts_train, "val": counts_val}
    report_examples(counts, config.max_len, progress)
    check_drops(counts, config.max_len, config.max_drop_fraction)
    if not train_ex:
        raise AlignlensError("no training examples left after tokenisation (max length too small?)")
    return TrainData(pairs, train_ex, val_ex, counts, pad_id, data_digest(train_ex))


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids [B, T] and a bool mask of target tokens [B, T]."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    target = torch.zeros((len(examples), width), dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        target[i, e.n_prompt: len(e.ids)] = True
    return ids, target


#: Optimizer steps per bucketing window (as the megabatches of HF Trainer's `group_by_length`).
BUCKET_WINDOW = 50


def epoch_order(n: int, seed: int, epoch: int, lengths: Sequence[int] | None = None, per_step: int = 1,
                window: int = BUCKET_WINDOW) -> list[int]:
    """The order of `n` training examples in `epoch`; step k takes `order[k * per_step: (k + 1) *
    per_step]`. Depends only on (seed, epoch, lengths, per_step), never on the global RNG, so a
    resumed run and every torchrun rank see the same batches.

    Without `lengths` ("random" batching): a seeded permutation. With `lengths` (tokens per
    example, "bucketed"): the same permutation cut into windows of `window` x `per_step`
    examples, each window sorted by length (stable) and cut into steps of `per_step`, then the
    steps shuffled (same generator); a partial step (only the epoch's last window can end in one)
    stays last. Every step therefore holds examples of similar length, so the micro-batches that
    `collate` pads to their longest example carry little padding; each example is still seen
    exactly once per epoch and every full step has `per_step` examples."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is None or n == 0:
        return order
    span = max(1, window) * per_step
    steps: list[list[int]] = []
    for w in range(0, n, span):
        ranked = sorted(order[w: w + span], key=lambda i: lengths[i])
        steps += [ranked[s: s + per_step] for s in range(0, len(ranked), per_step)]
    tail = [steps.pop()] if len(steps[-1]) < per_step else []
    shuffled = [steps[j] for j in torch.randperm(len(steps), generator=g).tolist()] + tail
    return [i for step in shuffled for i in step]


def micro_batches(order: Sequence[int], per_step: int, batch_size: int) -> list[list[int]]:
    """The micro-batches (lists of example indices, `batch_size` at most) the trainer pads one by
    one, in step order: step k's `per_step` examples cut into `batch_size` slices (torchrun rank
    r takes a contiguous share of whole slices, so the slices are the same)."""
    out = []
    for k in range(0, len(order), per_step):
        step = list(order[k: k + per_step])
        out += [step[j: j + batch_size] for j in range(0, len(step), batch_size)]
    return out


def padding_share(lengths: Sequence[int], batches: list[list[int]]) -> tuple[int, int]:
    """(real tokens, token slots) of `batches` right-padded to their longest example each."""
    real = sum(lengths[i] for b in batches for i in b)
    slots = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return real, slots
