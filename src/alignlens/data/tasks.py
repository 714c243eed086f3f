"""Task specs and their items, read and checked (the `data` package's first part; the file formats:
`alignlens.data`).

`load_task` reads a task folder's task.json into a `TaskSpec`; `load_items` a language's item file
into `Item`s, against the reference (English) file that holds the gold labels and the item order;
`validate_tasks` checks a whole run's tasks and languages before any model loads. Each problem is one
AlignlensError line naming file, line, field and, where they apply, task, language and label.
"""

from __future__ import annotations

import gzip
import json
import string
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from alignlens import AlignlensError
from alignlens.config import format_items
from alignlens.languages import paper_order

BUNDLED_TASKS: tuple[str, ...] = ("emotion", "snli", "paws")
#: The longest item field accepted by default, in characters (task.json `max_field_chars` changes
#: it). The bundled data's longest field has 1,233; 10,000 characters are 2,000-5,000 tokens,
#: and a field far longer makes every forward pass that holds it slow (minutes on a CPU).
MAX_FIELD_CHARS = 10_000


def data_root() -> Path:
    """Folder of the bundled data (inside the installed package)."""
    return Path(str(resources.files("alignlens") / "resources" / "data"))


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
    #: Item keys kept out of the prompts (task.json `ignored_fields`); any other unknown key is an error.
    ignored_fields: tuple[str, ...] = ()
    #: The longest item field accepted, in characters (task.json `max_field_chars`).
    max_field_chars: int = MAX_FIELD_CHARS

    @property
    def languages(self) -> tuple[str, ...]:
        """Languages that have both a prompt and an item file, paper order first (`load_task`
        refuses a listed language without an item file)."""
        have = {lang for lang in self.prompts if _item_file(self.folder, lang) is not None}
        return tuple(paper_order(sorted(have)))

    @property
    def reference_language(self) -> str | None:
        """The language whose file holds the gold labels and the item order every other language
        must repeat: English when the task has an English item file, else its first language."""
        if _item_file(self.folder, "en") is not None:
            return "en"
        return self.languages[0] if self.languages else None


@dataclass(frozen=True)
class Item:
    """One test item in one language; `label` is the gold English label (from the English file)."""

    task: str
    lang: str
    index: int
    label: str
    fields: dict[str, str] = field(default_factory=dict)


def _item_file(folder: Path, lang: str) -> Path | None:
    """`<lang>.jsonl` or `<lang>.jsonl.gz` in `folder` (None: neither); both is an AlignlensError."""
    found = [folder / name for name in (f"{lang}.jsonl", f"{lang}.jsonl.gz") if (folder / name).is_file()]
    if len(found) > 1:
        raise AlignlensError(f"{found[0]} and {found[1]} both exist (items of language {lang}): keep one of them")
    return found[0] if found else None


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def json_error(where: str, exc: json.JSONDecodeError, line: int | None = None) -> AlignlensError:
    """One line naming `where:line` and the whole JSON error with its column (json's own `msg`
    leaves the position out, e.g. "Invalid control character at")."""
    msg = exc.msg.rstrip()
    position = f"column {exc.colno}"
    msg = f"{msg} {position}" if msg.endswith(" at") else f"{msg} at {position}"
    return AlignlensError(f"{where}:{exc.lineno if line is None else line}: invalid JSON: {msg}")


def _decode_error(path: Path, exc: UnicodeDecodeError, line: int | None = None) -> AlignlensError:
    where = f"{path}:{line}" if line is not None else str(path)
    return AlignlensError(f"{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} cannot be decoded)")


def iter_json_objects(path: Path):
    """Yield (line number, object) for each non-blank line of a JSONL(.gz) file; a line that is not
    a JSON object, or not UTF-8, or a damaged .gz raises an AlignlensError naming file and line."""
    lineno = 0
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    raise _decode_error(path, exc, lineno) from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise json_error(str(path), exc, lineno) from None
                if not isinstance(row, dict):
                    raise AlignlensError(f"{path}:{lineno}: a line must be a JSON object, not {_json_kind(row)}")
                yield lineno, row
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        where = f"{path}: cannot read after line {lineno}" if lineno else f"{path}: cannot read"
        raise AlignlensError(f"{where}: {reason}") from None


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


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


def template_problem(template: str, fields: tuple[str, ...] | list[str]) -> str | None:
    """Why `template.format(**item)` would fail for items with text `fields` (None: it works).

    Catches a lone `{` or `}`, positional `{}` / `{0}`, unknown or dotted/indexed names and bad
    conversions or format specs, by parsing and by filling every field with a sample string."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{str(exc).rstrip('.')} (write {{{{ or }}}} for a literal brace)"
    names = [name for _, name, _, _ in parsed if name is not None]
    if any(name == "" or name.isdigit() for name in names):
        return f"positional placeholder {{}} (name a field: {', '.join('{' + f + '}' for f in fields)})"
    unknown = sorted({name for name in names} - set(fields))
    if unknown:
        return f"uses unknown placeholder(s) {unknown} (fields: {', '.join(fields)})"
    try:
        template.format(**{f: "text" for f in fields})
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        return f"cannot be filled ({type(exc).__name__}: {exc})"
    return None


def _read_spec(spec_path: Path) -> dict:
    """task.json as a dict; one-line AlignlensError for unreadable, non-UTF-8, invalid or non-object JSON."""
    try:
        text = spec_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _decode_error(spec_path, exc) from None
    except OSError as exc:
        raise AlignlensError(f"{spec_path}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise json_error(str(spec_path), exc) from None
    if not isinstance(raw, dict):
        raise AlignlensError(f"{spec_path}: a task spec must be a JSON object, not {_json_kind(raw)}")
    return raw


@lru_cache(maxsize=64)
def load_task(name_or_path: str | Path) -> TaskSpec:
    """Load and validate a task spec (bundled name or folder path).

    Everything that can be checked without items or a model is checked here, each error one line
    naming task.json and the field (and the task, language and label where they apply)."""
    folder = _resolve_task_folder(name_or_path)
    spec_path = folder / "task.json"
    if not spec_path.is_file():
        raise AlignlensError(f"{spec_path}: missing task spec (task.json)")
    raw = _read_spec(spec_path)

    def need(key: str, kind: type, where: dict = raw, ctx: str = "") -> object:
        if key not in where:
            raise AlignlensError(f"{spec_path}: missing field '{ctx}{key}'")
        value = where[key]
        if not isinstance(value, kind):
            raise AlignlensError(f"{spec_path}: field '{ctx}{key}' must be {_KIND_NAMES.get(kind, kind.__name__)}, "
                                 f"not {_json_kind(value)}")
        return value

    name = str(raw.get("name", folder.name))
    labels = need("labels", list)
    fields = need("fields", list)
    if len(labels) < 2 or not all(isinstance(x, str) and x.strip() for x in labels):
        raise AlignlensError(f"{spec_path}: field 'labels' must list at least two non-empty strings")
    if len(set(labels)) != len(labels):
        raise AlignlensError(f"{spec_path}: field 'labels' has duplicates")
    if not fields or not all(isinstance(x, str) and x for x in fields):
        raise AlignlensError(f"{spec_path}: field 'fields' must list the item's text fields")
    if len(set(fields)) != len(fields):
        raise AlignlensError(f"{spec_path}: field 'fields' has duplicates")
    ignored = raw.get("ignored_fields", [])
    if not isinstance(ignored, list) or not all(isinstance(x, str) and x for x in ignored):
        raise AlignlensError(f"{spec_path}: field 'ignored_fields' must list item keys (strings), not {_json_kind(ignored)}")
    clash = [x for x in ignored if x in fields or x in ("index", "label")]
    if clash:
        raise AlignlensError(f"{spec_path}: field 'ignored_fields' lists {clash[0]!r}, which is "
                             f"{'a field of the prompts' if clash[0] in fields else 'a reserved item key'}")
    max_chars = raw.get("max_field_chars", MAX_FIELD_CHARS)
    if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1:
        raise AlignlensError(f"{spec_path}: field 'max_field_chars' must be a whole number of characters >= 1, "
                             f"not {max_chars!r}")
    langs = need("languages", dict)
    if not langs:
        raise AlignlensError(f"{spec_path}: field 'languages' is empty")
    prompts: dict[str, LanguagePrompt] = {}
    for lang, entry in langs.items():
        if not isinstance(entry, dict):
            raise AlignlensError(f"{spec_path}: field 'languages.{lang}' must be an object, not {_json_kind(entry)}")
        ctx = f"languages.{lang}."
        demos = need("demonstrations", str, entry, ctx)
        template = need("query_template", str, entry, ctx)
        problem = template_problem(template, fields)
        if problem:
            raise AlignlensError(
                f"{spec_path}: field '{ctx}query_template' of task {name}, language {lang}: {problem}"
            )
        unused = [f for f in fields if f not in _template_fields(template)]
        if unused:  # the prompt would silently leave out part of every item
            raise AlignlensError(
                f"{spec_path}: field '{ctx}query_template' of task {name}, language {lang}: never uses field(s) "
                f"{unused} (every field in 'fields' must appear in every query template; item keys the prompts "
                "should not show belong in 'ignored_fields')")
        key = "test_file_label_words" if "test_file_label_words" in entry else "label_words"
        words = entry.get(key, {})
        if not isinstance(words, dict):
            raise AlignlensError(f"{spec_path}: field '{ctx}{key}' must map labels to words, not {_json_kind(words)}")
        if key in entry and not words:
            raise AlignlensError(f"{spec_path}: field '{ctx}{key}' is empty (task {name}, language {lang}): give "
                                 "each label's word in this language, or leave the field out")
        bad = set(words) - set(labels)
        if bad:
            raise AlignlensError(f"{spec_path}: field '{ctx}{key}' has unknown labels {sorted(bad)}")
        for label, word in words.items():
            if not isinstance(word, str) or not word.strip():
                raise AlignlensError(
                    f"{spec_path}: field '{ctx}{key}.{label}': empty label word (task {name}, language {lang}, "
                    f"label {label!r})" if isinstance(word, str) else
                    f"{spec_path}: field '{ctx}{key}.{label}' must be a string, not {_json_kind(word)} "
                    f"(task {name}, language {lang}, label {label!r})"
                )
        by_word: dict[str, str] = {}
        for label, word in words.items():
            if word.strip() in by_word:
                raise AlignlensError(
                    f"{spec_path}: field '{ctx}{key}' gives labels {by_word[word.strip()]!r} and {label!r} the same "
                    f"word {word.strip()!r} (task {name}, language {lang}): each label needs its own word")
            by_word[word.strip()] = label
        prompts[lang] = LanguagePrompt(demonstrations=demos, query_template=template, label_words=dict(words))
    for lang in langs:
        if _item_file(folder, lang) is None:  # (both .jsonl and .jsonl.gz: refused by _item_file)
            raise AlignlensError(f"{spec_path}: field 'languages.{lang}' of task {name}: no item file {lang}.jsonl or "
                                 f"{lang}.jsonl.gz in {folder} (add it, or remove the language from task.json)")
    shots = raw.get("shots")
    return TaskSpec(
        name=name,
        labels=tuple(labels),
        fields=tuple(fields),
        prompts=prompts,
        folder=folder,
        shots=shots if isinstance(shots, int) else None,
        description=str(raw.get("description", "")),
        source=str(raw.get("source", "")),
        licence=str(raw.get("licence", "")),
        ignored_fields=tuple(ignored),
        max_field_chars=max_chars,
    )


_KIND_NAMES = {list: "a list", dict: "an object", str: "a string"}


@lru_cache(maxsize=256)
def _read_items(folder: Path, lang: str, labels: tuple[str, ...], fields: tuple[str, ...],
                ignored: tuple[str, ...] = (), max_chars: int = MAX_FIELD_CHARS) -> tuple[dict, ...]:
    """Every line of one item file, checked on its own (JSON, keys, types, lengths, repeated
    indices, known labels): rows {"index", "label" (None when absent), "fields", "line"}."""
    path = _item_file(folder, lang)
    if path is None:
        raise AlignlensError(f"{folder}: no item file {lang}.jsonl or {lang}.jsonl.gz")
    rows: list[dict] = []
    seen: set[int] = set()
    known = {"index", "label", *fields, *ignored}
    for lineno, row in iter_json_objects(path):
        for f in fields:
            if f not in row:
                raise AlignlensError(f"{path}:{lineno}: missing field {f!r}")
            if not isinstance(row[f], str):
                raise AlignlensError(f"{path}:{lineno}: field {f!r} must be a string")
            if len(row[f]) > max_chars:
                raise AlignlensError(f"{path}:{lineno}: field {f!r} has {len(row[f]):,} characters, more than the "
                                     f"limit of {max_chars:,} per field (task.json 'max_field_chars' raises it)")
        unknown = [k for k in row if k not in known]
        if unknown:
            raise AlignlensError(
                f"{path}:{lineno}: unknown field {unknown[0]!r}: no prompt would show it (the task's fields: "
                f"{', '.join(fields)}); add it to task.json 'fields' and every query template, or to 'ignored_fields'")
        index = row.get("index", len(rows))
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise AlignlensError(f"{path}:{lineno}: field 'index' must be a non-negative integer, not "
                                 f"{json.dumps(index, ensure_ascii=False)} ({_json_kind(index)})")
        if index in seen:
            raise AlignlensError(f"{path}:{lineno}: field 'index' repeats {index}")
        seen.add(index)
        label = row.get("label")
        if label is not None and (not isinstance(label, str) or label not in labels):
            raise AlignlensError(
                f"{path}:{lineno}: field 'label' is {label!r}, not one of {list(labels)}"
            )
        rows.append({"index": index, "label": label, "fields": {f: row[f] for f in fields}, "line": lineno})
    if not rows:
        raise AlignlensError(f"{path}: no items")
    return tuple(rows)


def _rows(spec: TaskSpec, lang: str) -> tuple[dict, ...]:
    return _read_items(spec.folder, lang, spec.labels, spec.fields, spec.ignored_fields, spec.max_field_chars)


def load_items(task: str | Path | TaskSpec, lang: str, limit: int | None = None) -> list[Item]:
    """Items of `task` in `lang`, gold labels from the reference file (`TaskSpec.reference_language`:
    the English file when there is one).

    The whole file is checked against the reference file whatever `limit` is: the same item
    indices in the same order, and a `label` it gives equal to the reference's (each refusal one
    AlignlensError naming file, line, language, index and both labels). `limit` keeps the first
    `limit` items in file order (a fixed subset: the paper's test files are already random
    samples, and for SNLI the first items cover each premise with all three labels). Returns
    items in file order.
    """
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    if lang not in spec.prompts:
        raise AlignlensError(
            f"task {spec.name!r} has no prompt for language {lang!r} (has: {', '.join(spec.languages)})"
        )
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise AlignlensError(f"limit must be a positive number of items, not {limit!r}")
    rows = _rows(spec, lang)
    path = _item_file(spec.folder, lang)
    ref = spec.reference_language
    if ref is None or ref == lang:
        for row in rows:
            if row["label"] is None:
                raise AlignlensError(f"{path}:{row['line']}: missing field 'label' (item index {row['index']})")
        labels = [row["label"] for row in rows]
    else:
        labels = _labels_from_reference(spec, lang, rows, ref)
    return [Item(task=spec.name, lang=lang, index=row["index"], label=label, fields=row["fields"])
            for row, label in list(zip(rows, labels))[: limit if limit is not None else None]]


def _labels_from_reference(spec: TaskSpec, lang: str, rows: tuple[dict, ...], ref: str) -> list[str]:
    """The gold labels of `rows` (language `lang`) from the reference language's file, after checking
    that `lang` lists the reference's items in the reference's order with no other label."""
    path, ref_path = _item_file(spec.folder, lang), _item_file(spec.folder, ref)
    ref_rows = _rows(spec, ref)
    gold = {r["index"]: r for r in ref_rows}
    source = "the English file" if ref == "en" else f"{ref_path.name}, the reference file of task {spec.name}"
    labels: list[str] = []
    for row in rows:
        ref_row = gold.get(row["index"])
        if ref_row is None:
            raise AlignlensError(f"{path}:{row['line']}: item index {row['index']} is not in {ref_path.name} "
                                 f"(gold labels come from {source})")
        if ref_row["label"] is None:
            raise AlignlensError(f"{ref_path}:{ref_row['line']}: missing field 'label' (item index {row['index']}, "
                                 f"needed by {path.name})")
        if row["label"] is not None and row["label"] != ref_row["label"]:
            raise AlignlensError(
                f"{path}:{row['line']}: item index {row['index']} has label {row['label']!r} in language {lang} but "
                f"{ref_row['label']!r} in {ref_path.name}:{ref_row['line']} (task {spec.name}; gold labels come from "
                f"{source}): fix one of them, or leave 'label' out of {path.name}")
        labels.append(ref_row["label"])
    if len(rows) < len(ref_rows):
        missing = sorted(set(gold) - {row["index"] for row in rows})
        raise AlignlensError(
            f"{path}: item index(es) {format_items(missing, 5)} of {ref_path.name} missing ({len(rows)} items, "
            f"{ref_path.name} has {len(ref_rows)}; task {spec.name}, language {lang}): every language needs the "
            "same items, or its accuracy and the means over languages cover other items")
    for row, ref_row in zip(rows, ref_rows):
        if row["index"] != ref_row["index"]:
            raise AlignlensError(
                f"{path}:{row['line']}: item index {row['index']} where {ref_path.name}:{ref_row['line']} has "
                f"{ref_row['index']} (task {spec.name}, language {lang}): list the items in the order of "
                f"{ref_path.name}, or --limit takes other items in each language")
    return labels


def check_languages(languages: list[str], known: tuple[str, ...] | list[str], what: str = "languages") -> None:
    unknown = [lang for lang in languages if lang not in known]
    if unknown:
        raise AlignlensError(f"unknown {what} {', '.join(unknown)} (known: {', '.join(known)})")



def task_languages(spec: TaskSpec, languages: list[str] | None) -> list[str]:
    """The languages to run for `spec`: all of its languages for None, else `languages` (checked)."""
    if languages is None:
        return list(spec.languages)
    check_languages(languages, spec.languages, f"languages for task {spec.name}")
    return list(languages)


def _check_list(values: list[str], what: str) -> None:
    if not values:
        raise AlignlensError(f"no {what} given")
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise AlignlensError(f"{what[:-1] if what.endswith('s') else what} {v!r} is given twice")
        seen.add(v)


def validate_tasks(tasks: list[str], languages: list[str] | None = None, limit: int | None = None) -> None:
    """Load and check every task spec (every language it lists has one item file) and the whole
    item files of the requested languages, each against the reference (English) file that holds
    their gold labels and item order (`load_items`); `limit` is checked as a run would use it.

    Cheap (no model): call it before loading a model so bad data fail at once, with one line
    naming file, line and field. `languages` None means every language of each task; an empty
    list, or a task or language given twice, is an error. The loads are cached, so the run
    that follows reads nothing twice."""
    _check_list(list(tasks), "tasks")
    if languages is not None:
        _check_list(list(languages), "languages")
    for t in tasks:
        spec = load_task(t)
        for lang in task_languages(spec, languages):
            load_items(spec, lang, limit)
