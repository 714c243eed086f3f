"""Tasks, languages, items and prompts.

A *task* is a folder with a `task.json` spec and one `<lang>.jsonl` (or `.jsonl.gz`) file of
items per language. The three tasks of the paper (`emotion`, `snli`, `paws`) are bundled in
`alignlens/resources/data`; users add their own by passing a folder path wherever a task name
is accepted.

task.json keys: `labels` (English label words), `fields` (text fields of an item), `shots`
(optional, informational), and `languages`: {lang: {"demonstrations", "query_template",
"label_words" (optional: English label -> word in that language, for the logit lens)}}. The
query template uses `{field}` placeholders and ends where the answer's first token follows.

Item lines: {"index": int (optional, defaults to the line number), "label": English label
(required in the English file; elsewhere optional), <field>: str, ...}. Test sets are parallel
across languages: when the task has an English file, gold labels come from it for every language.

Prompt (paper): `demonstrations + "\\n" + query_template.format(**item)`; the answer is scored on
the next token.
"""

from __future__ import annotations

import gzip
import json
import random
import string
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from alignlens import AlignlensError

#: Languages of the paper, in the paper's order.
PAPER_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "de", "fr", "es", "it", "nl", "ja", "ru", "sv",
    "sl", "pl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn",
)
BUNDLED_TASKS: tuple[str, ...] = ("emotion", "snli", "paws")
QT_LANGUAGES: tuple[str, ...] = ("de", "es", "it", "sw", "zh")


def paper_order(langs) -> list[str]:
    """The paper's languages first, in the paper's order, then the others in the order given."""
    langs = list(dict.fromkeys(langs))
    return [lang for lang in PAPER_LANGUAGES if lang in langs] + [lang for lang in langs if lang not in PAPER_LANGUAGES]


def data_root() -> Path:
    """Folder of the bundled data (inside the installed package)."""
    return Path(str(resources.files("alignlens") / "resources" / "data"))


@lru_cache(maxsize=1)
def language_names() -> dict[str, str]:
    """Language code -> English name (bundled languages)."""
    return json.loads((data_root() / "languages.json").read_text(encoding="utf-8"))


def language_name(code: str) -> str:
    return language_names().get(code, code)


@dataclass(frozen=True)
class LanguagePrompt:
    """Few-shot prefix and query template of one task in one language."""

    demonstrations: str
    query_template: str
    #: English label -> the label word in this language (optional; used by the logit lens).
    label_words: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """A task: English label words, item fields and per-language prompts."""

    name: str
    labels: tuple[str, ...]
    fields: tuple[str, ...]
    prompts: dict[str, LanguagePrompt]
    folder: Path
    shots: int | None = None
    description: str = ""
    source: str = ""
    licence: str = ""

    @property
    def languages(self) -> tuple[str, ...]:
        """Languages that have both a prompt and an item file, paper order first."""
        have = {lang for lang in self.prompts if _item_file(self.folder, lang) is not None}
        return tuple(paper_order(sorted(have)))


@dataclass(frozen=True)
class Item:
    """One test item in one language; `label` is the gold English label (from the English file)."""

    task: str
    lang: str
    index: int
    label: str
    fields: dict[str, str] = field(default_factory=dict)


def _item_file(folder: Path, lang: str) -> Path | None:
    for name in (f"{lang}.jsonl", f"{lang}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def iter_json_objects(path: Path):
    """Yield (line number, object) for each non-blank line of a JSONL(.gz) file; a line that is not
    a JSON object raises an AlignlensError naming the file and line."""
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlignlensError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise AlignlensError(f"{path}:{lineno}: a line must be a JSON object")
            yield lineno, row


def list_tasks() -> list[str]:
    """Names of the bundled tasks."""
    return list(BUNDLED_TASKS)


def _resolve_task_folder(name_or_path: str | Path) -> Path:
    bundled = data_root() / "tasks" / str(name_or_path)
    if str(name_or_path) in BUNDLED_TASKS:
        return bundled
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.name == "task.json":
        return path.parent
    raise AlignlensError(
        f"unknown task {str(name_or_path)!r}: not a bundled task ({', '.join(BUNDLED_TASKS)}) "
        "nor a folder with a task.json"
    )


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@lru_cache(maxsize=64)
def load_task(name_or_path: str | Path) -> TaskSpec:
    """Load and validate a task spec (bundled name or folder path)."""
    folder = _resolve_task_folder(name_or_path)
    spec_path = folder / "task.json"
    if not spec_path.is_file():
        raise AlignlensError(f"{spec_path}: missing task spec (task.json)")
    try:
        raw = json.loads(spec_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AlignlensError(f"{spec_path}:{exc.lineno}: invalid JSON: {exc.msg}") from None

    def need(key: str, kind: type, where: dict = raw, ctx: str = "") -> object:
        if key not in where:
            raise AlignlensError(f"{spec_path}: missing field '{ctx}{key}'")
        value = where[key]
        if not isinstance(value, kind):
            raise AlignlensError(f"{spec_path}: field '{ctx}{key}' must be {kind.__name__}")
        return value

    labels = need("labels", list)
    fields = need("fields", list)
    if len(labels) < 2 or not all(isinstance(x, str) and x.strip() for x in labels):
        raise AlignlensError(f"{spec_path}: field 'labels' must list at least two non-empty strings")
    if len(set(labels)) != len(labels):
        raise AlignlensError(f"{spec_path}: field 'labels' has duplicates")
    if not fields or not all(isinstance(x, str) and x for x in fields):
        raise AlignlensError(f"{spec_path}: field 'fields' must list the item's text fields")
    langs = need("languages", dict)
    if not langs:
        raise AlignlensError(f"{spec_path}: field 'languages' is empty")
    prompts: dict[str, LanguagePrompt] = {}
    for lang, entry in langs.items():
        if not isinstance(entry, dict):
            raise AlignlensError(f"{spec_path}: field 'languages.{lang}' must be an object")
        ctx = f"languages.{lang}."
        demos = need("demonstrations", str, entry, ctx)
        template = need("query_template", str, entry, ctx)
        used = _template_fields(template)
        unknown = used - set(fields)
        if unknown:
            raise AlignlensError(
                f"{spec_path}: field '{ctx}query_template' uses unknown placeholder(s) {sorted(unknown)}"
            )
        words = entry.get("test_file_label_words", entry.get("label_words", {}))
        if not isinstance(words, dict) or not all(isinstance(v, str) for v in words.values()):
            raise AlignlensError(f"{spec_path}: field '{ctx}label_words' must map labels to words")
        bad = set(words) - set(labels)
        if bad:
            raise AlignlensError(f"{spec_path}: field '{ctx}label_words' has unknown labels {sorted(bad)}")
        prompts[lang] = LanguagePrompt(demonstrations=demos, query_template=template, label_words=dict(words))
    shots = raw.get("shots")
    return TaskSpec(
        name=str(raw.get("name", folder.name)),
        labels=tuple(labels),
        fields=tuple(fields),
        prompts=prompts,
        folder=folder,
        shots=shots if isinstance(shots, int) else None,
        description=str(raw.get("description", "")),
        source=str(raw.get("source", "")),
        licence=str(raw.get("licence", "")),
    )


@lru_cache(maxsize=256)
def _read_items(folder: Path, lang: str, labels: tuple[str, ...], fields: tuple[str, ...]) -> tuple[dict, ...]:
    path = _item_file(folder, lang)
    if path is None:
        raise AlignlensError(f"{folder}: no item file {lang}.jsonl or {lang}.jsonl.gz")
    rows: list[dict] = []
    seen: set[int] = set()
    for lineno, row in iter_json_objects(path):
        for f in fields:
            if f not in row:
                raise AlignlensError(f"{path}:{lineno}: missing field {f!r}")
            if not isinstance(row[f], str):
                raise AlignlensError(f"{path}:{lineno}: field {f!r} must be a string")
        index = row.get("index", len(rows))
        if not isinstance(index, int) or index < 0:
            raise AlignlensError(f"{path}:{lineno}: field 'index' must be a non-negative integer")
        if index in seen:
            raise AlignlensError(f"{path}:{lineno}: field 'index' repeats {index}")
        seen.add(index)
        label = row.get("label")
        if label is not None and label not in labels:
            raise AlignlensError(
                f"{path}:{lineno}: field 'label' is {label!r}, not one of {list(labels)}"
            )
        rows.append({"index": index, "label": label, "fields": {f: row[f] for f in fields}})
    if not rows:
        raise AlignlensError(f"{path}: no items")
    return tuple(rows)


def load_items(task: str | Path | TaskSpec, lang: str, limit: int | None = None) -> list[Item]:
    """Items of `task` in `lang`, gold labels from the English file when it exists.

    `limit` keeps the first `limit` items in file order (a fixed subset: the paper's test files
    are already random samples, and for SNLI the first items cover each premise with all three
    labels). Returns items sorted by file order.
    """
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    if lang not in spec.prompts:
        raise AlignlensError(
            f"task {spec.name!r} has no prompt for language {lang!r} (has: {', '.join(spec.languages)})"
        )
    rows = _read_items(spec.folder, lang, spec.labels, spec.fields)
    gold: dict[int, str] | None = None
    if lang != "en" and _item_file(spec.folder, "en") is not None:
        gold = {r["index"]: r["label"] for r in _read_items(spec.folder, "en", spec.labels, spec.fields)}
    items: list[Item] = []
    for row in rows[: limit if limit is not None else None]:
        label = gold.get(row["index"]) if gold is not None else row["label"]
        if label is None:
            path = _item_file(spec.folder, "en" if gold is not None else lang)
            raise AlignlensError(f"{path}: no 'label' for item index {row['index']}")
        items.append(Item(task=spec.name, lang=lang, index=row["index"], label=label, fields=row["fields"]))
    return items


def build_prompt(spec: TaskSpec, lang: str, item: Item) -> str:
    """The paper's prompt: demonstrations, a newline, then the filled query template."""
    p = spec.prompts[lang]
    return p.demonstrations + "\n" + p.query_template.format(**item.fields)


def prompt_prefix(spec: TaskSpec, lang: str) -> str:
    """The part of every prompt of `lang` that precedes the query (demonstrations + newline)."""
    return spec.prompts[lang].demonstrations + "\n"


def check_languages(languages: list[str], known: tuple[str, ...] | list[str], what: str = "languages") -> None:
    unknown = [lang for lang in languages if lang not in known]
    if unknown:
        raise AlignlensError(f"unknown {what} {', '.join(unknown)} (known: {', '.join(known)})")


# ---- question-translation (training) data ---------------------------------------------------


@dataclass(frozen=True)
class TranslationPair:
    """One question-translation training example (paper's format)."""

    lang: str
    input: str
    answer: str


def translation_instruction(lang: str) -> str:
    return f"\nTranslate the input from {language_name(lang)} to English:\n"


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
