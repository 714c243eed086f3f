"""Question-translation (training) pairs (`alignlens.data`): the bundled SNLI question-translation
set, a task's own questions translated X -> target (its English file, or another language's, is the
target), the English copy control, and user translation files; the paper's pair format
(`translation_instruction`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from alignlens import AlignlensError
from alignlens.config import format_items
from alignlens.data.tasks import (Item, TaskSpec, _item_file, _open_text, check_languages, data_root, iter_json_objects,
                                   load_items, load_task, task_languages)
from alignlens.languages import language_name

QT_LANGUAGES: tuple[str, ...] = ("de", "es", "it", "sw", "zh")


@dataclass(frozen=True)
class TranslationPair:
    """One question-translation training example (paper's format)."""

    lang: str
    input: str
    answer: str


def translation_instruction(lang: str, target: str = "en") -> str:
    """The instruction after a question in `lang`: "\nTranslate the input from <Lang> to <Target>:\n"."""
    return f"\nTranslate the input from {language_name(lang)} to {language_name(target)}:\n"


def load_question_translation(
    languages: list[str], per_language: int | None = None, seed: int = 0
) -> list[TranslationPair]:
    """Bundled SNLI question-translation pairs for `languages` (de es it sw zh).

    `per_language` examples per language are sampled without replacement with `seed`
    (all 10,000 when None). Input: `<question in X>` + the translation instruction; answer: the
    English question.
    """
    check_languages(languages, QT_LANGUAGES, "question-translation languages")
    rng = random.Random(seed)
    pairs: list[TranslationPair] = []
    for lang in languages:
        path = data_root() / "qt" / "snli" / f"{lang}.jsonl.gz"
        with _open_text(path) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        idx = list(range(len(rows)))
        if per_language is not None:
            if per_language > len(rows):
                raise AlignlensError(f"--per-language {per_language} exceeds the {len(rows)} {lang} examples")
            idx = sorted(rng.sample(idx, per_language))
        instr = translation_instruction(lang)
        pairs.extend(TranslationPair(lang, rows[i]["text"] + instr, rows[i]["english"]) for i in idx)
    return pairs


def task_query(spec: TaskSpec, lang: str, item: Item) -> str:
    """The question of `item` in `lang`: its query template filled with the item's fields, no
    demonstrations, ending where the answer would follow (at the answer's opening quote)."""
    return spec.prompts[lang].query_template.format(**item.fields)


def default_train_items(task: str | Path | TaskSpec) -> tuple[int, ...]:
    """The default alignment training split of a task: the second half of its English items in
    file order (items 250-499 of 500, 300-599 of 600), leaving the first half for evaluation."""
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    if _item_file(spec.folder, "en") is None or "en" not in spec.prompts:
        raise AlignlensError(f"task {spec.name}: task-question alignment needs an English item file and prompt "
                             f"(the translation target) in {spec.folder}")
    indices = [it.index for it in load_items(spec, "en")]
    return tuple(sorted(indices[len(indices) // 2:]))


def load_task_question_translation(
    task: str | Path | TaskSpec, languages: list[str], items: list[int] | tuple[int, ...],
    per_language: int | None = None, seed: int = 0, target: str = "en",
) -> list[TranslationPair]:
    """X -> target question pairs from a task's own parallel test files, questions only (no answers).

    For each language X of `languages` (not the target) and each item index in `items` (at most
    `per_language` of them per language, a seeded sample, all when None or when there are fewer):
    input = the item's question in X (`task_query`: X template and fields, ending at the answer's
    opening quote) + "\nTranslate the input from <X> to <Target>:\n"; answer = the same item's
    question in `target` (default English; any language the task has a file for). Pairs are in
    language order, then file order. An index missing from a file is an AlignlensError naming the
    file, task and language."""
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    default_train_items(spec)  # checks that the English (reference) file and prompt exist
    if target in languages:
        copy = " (for English -> English pairs use --control copy)" if target == "en" else ""
        raise AlignlensError(f"task {spec.name}: {language_name(target)} ({target}) is the translation target, "
                             f"not a source language{copy}")
    if target not in spec.languages:
        raise AlignlensError(f"task {spec.name} has no {target} items to translate into (target language {target}; "
                             f"it has: {', '.join(spec.languages)})")
    languages = task_languages(spec, list(languages))
    if not items:
        raise AlignlensError(f"task {spec.name}: no training items given")
    targets = {it.index: it for it in load_items(spec, target)}
    rng = random.Random(seed)
    pairs: list[TranslationPair] = []
    for lang in languages:
        source = {it.index: it for it in load_items(spec, lang)}
        for what, table in ((lang, source), (target, targets)):
            missing = [i for i in items if i not in table]
            if missing:
                raise AlignlensError(f"{_item_file(spec.folder, what)}: training item(s) {format_items(missing, 5)} missing "
                                     f"(task {spec.name}, language {what}; {len(missing)} of {len(items)})")
        idx = list(items)
        if per_language is not None and per_language < len(idx):
            idx = sorted(rng.sample(idx, per_language))
        instr = translation_instruction(lang, target)
        pairs.extend(TranslationPair(lang, task_query(spec, lang, source[i]) + instr, task_query(spec, target, targets[i]))
                     for i in idx)
    return pairs


def english_copies(pairs: list[TranslationPair]) -> list[TranslationPair]:
    """The copy control of `pairs`: English -> English (input = the English question + "\nTranslate
    the input from English to English:\n", answer = the English question), one per pair, in the
    same order and with the same `lang` (the language whose slot the copy fills), so a control run
    has the same items, split and steps as the alignment run it controls."""
    instr = translation_instruction("en")
    return [TranslationPair(p.lang, p.answer + instr, p.answer) for p in pairs]


def load_translation_file(path: str | Path) -> list[TranslationPair]:
    """User training data: JSONL of {"input", "answer"} pairs or {"lang", "text", "english"}.

    Bad lines raise an AlignlensError naming the file, line and field.
    """
    path = Path(path)
    if not path.is_file():
        raise AlignlensError(f"{path}: no such file")
    pairs: list[TranslationPair] = []
    for lineno, row in iter_json_objects(path):
        if "input" in row or "answer" in row:
            keys = ("input", "answer")
        else:
            keys = ("lang", "text", "english")
        for k in keys:
            if k not in row:
                raise AlignlensError(f"{path}:{lineno}: missing field {k!r}")
            if not isinstance(row[k], str) or not row[k].strip():
                raise AlignlensError(f"{path}:{lineno}: field {k!r} must be a non-empty string")
        if keys[0] == "input":
            pairs.append(TranslationPair(str(row.get("lang", "")), row["input"], row["answer"]))
        else:
            pairs.append(TranslationPair(row["lang"], row["text"] + translation_instruction(row["lang"]), row["english"]))
    if not pairs:
        raise AlignlensError(f"{path}: no examples")
    return pairs
