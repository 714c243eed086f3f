"""Custom task data that used to be accepted without comment (audit issue 19, items 4, 13, 25, 33,
34): each is refused before any model loads, through the real command (`alignlens.cli.main.main`,
in process, with the model loader replaced by a tripwire), as one `error:` line naming file, line
and field, exit code 2, and nothing written."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import signal
import sys
from pathlib import Path

import pytest

from alignlens import AlignlensError, data

SPEC = {"labels": ["yes", "no"], "fields": ["text"],
        "languages": {"en": {"demonstrations": 'a\nAnswer: "yes"\nb\nAnswer: "no"', "query_template": '{text}\nAnswer: "'},
                      "de": {"demonstrations": 'c\nAntwort: "yes"\nd\nAntwort: "no"',
                             "query_template": '{text}\nAntwort: "', "label_words": {"yes": "ja", "no": "nein"}}}}
EN = [{"index": 0, "label": "yes", "text": "x"}, {"index": 1, "label": "no", "text": "y"},
      {"index": 2, "label": "yes", "text": "z"}]
DE = [{"index": 0, "text": "xx"}, {"index": 1, "text": "yy"}, {"index": 2, "text": "zz"}]


def _task(folder: Path, spec: dict | None = None, files: dict | None = None) -> Path:
    """A task folder: task.json from `spec` (default SPEC) and `files` lang -> rows (default EN, DE)."""
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps(SPEC if spec is None else spec), encoding="utf-8")
    for lang, rows in ({"en": EN, "de": DE} if files is None else files).items():
        (folder / f"{lang}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                              encoding="utf-8")
    return folder


def _copy(value):
    return json.loads(json.dumps(value))


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class _ModelLoaded(AlignlensError):
    pass


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `alignlens ARGS` in process: (exit code, stdout, stderr). Loading a model raises
    `_ModelLoaded`, so a refusal that comes after the load is seen as that, not as the data error."""
    from alignlens import model
    from alignlens.cli import main as cli_main

    def tripwire(*args, **kwargs):
        raise _ModelLoaded("MODEL LOADED")

    monkeypatch.setattr(model, "load_hf", tripwire)
    sigterm = signal.getsignal(signal.SIGTERM)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["alignlens", *args])
        capsys.readouterr()
        try:
            with pytest.raises(SystemExit) as exc:
                cli_main.main()
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return run


def _refused(cli, tmp_path: Path, task: Path, *extra: str, command: str = "eval") -> str:
    """Run `command` on `task`; assert one `error:` line, exit code 2, no model, nothing written.
    Returns the error line (without `error: `)."""
    before = _snapshot(task)
    out = tmp_path / "out"
    code, stdout, stderr = cli(command, "--tasks", str(task), "--out", str(out), *extra)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "MODEL LOADED" not in stderr and "Traceback" not in stderr
    assert not out.exists() and _snapshot(task) == before
    return lines[0][len("error: "):]


def test_the_valid_task_gets_past_every_check_to_the_model_load(cli, tmp_path):
    """The control for every case below: the same folder without its defect is accepted (the run
    reaches the model load), so each refusal is caused by the defect alone."""
    task = _task(tmp_path / "t", files={"en": EN, "de": DE, "fr": EN})
    spec = _copy(SPEC)
    spec["languages"]["fr"] = _copy(spec["languages"]["de"])
    (task / "task.json").write_text(json.dumps(spec), encoding="utf-8")
    for command in ("eval", "analyze"):
        code, _, stderr = cli(command, "--tasks", str(task), "--out", str(tmp_path / command))
        assert code == 2 and "MODEL LOADED" in stderr, stderr


# ---- item 4: accepted without comment ---------------------------------------------------------


def test_boolean_index_is_refused(cli, tmp_path):
    """JSON `true` is a Python int (1): it was taken as item 1 and paired with item 1 by `report`."""
    task = _task(tmp_path / "t", files={"en": [EN[0], {**EN[1], "index": True}], "de": DE[:2]})
    msg = _refused(cli, tmp_path, task)
    assert msg == f"{task / 'en.jsonl'}:2: field 'index' must be a non-negative integer, not true (a boolean)"


def test_language_without_items_file_is_refused(cli, tmp_path):
    spec = _copy(SPEC)
    spec["languages"]["fr"] = _copy(spec["languages"]["de"])
    task = _task(tmp_path / "t", spec)
    msg = _refused(cli, tmp_path, task)
    assert msg == (f"{task / 'task.json'}: field 'languages.fr' of task t: no item file fr.jsonl or fr.jsonl.gz "
                   f"in {task} (add it, or remove the language from task.json)")


def test_both_plain_and_gzip_items_files_are_refused(cli, tmp_path):
    task = _task(tmp_path / "t")
    with gzip.open(task / "de.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(DE[0]) + "\n")
    msg = _refused(cli, tmp_path, task)
    assert msg == f"{task / 'de.jsonl'} and {task / 'de.jsonl.gz'} both exist (items of language de): keep one of them"


def test_query_template_that_drops_a_field_is_refused(cli, tmp_path):
    """Choice: refuse, not warn. A field in `fields` that a language's template never uses leaves
    part of every item out of that language's prompts (a warning scrolls away under a progress bar,
    and the accuracy would silently be for another task); item keys meant to stay out of the
    prompts are declared in `ignored_fields`."""
    spec = _copy(SPEC)
    spec["fields"] = ["text", "extra"]
    spec["languages"]["en"]["query_template"] = '{text} {extra}\nAnswer: "'
    task = _task(tmp_path / "t", spec, {"en": [{**r, "extra": "e"} for r in EN], "de": [{**r, "extra": "e"} for r in DE]})
    msg = _refused(cli, tmp_path, task)
    assert msg.startswith(f"{task / 'task.json'}: field 'languages.de.query_template' of task t, language de: "
                          "never uses field(s) ['extra']"), msg


def test_item_key_no_prompt_shows_is_refused_unless_ignored(cli, tmp_path):
    rows = [{**r, "hypothesis": "h"} for r in EN]
    task = _task(tmp_path / "t", files={"en": rows, "de": DE})
    msg = _refused(cli, tmp_path, task)
    assert msg.startswith(f"{task / 'en.jsonl'}:1: unknown field 'hypothesis': no prompt would show it "
                          "(the task's fields: text)"), msg
    assert "'ignored_fields'" in msg
    spec = _copy(SPEC)
    spec["ignored_fields"] = ["hypothesis"]
    task = _task(tmp_path / "t2", spec, files={"en": rows, "de": DE})
    assert [it.fields for it in data.load_items(str(task), "en")] == [{"text": r["text"]} for r in EN]


def test_template_field_the_items_lack_is_refused(cli, tmp_path):
    spec = _copy(SPEC)  # the template names a field the task does not declare
    spec["languages"]["de"]["query_template"] = '{text} {topic}\nAntwort: "'
    msg = _refused(cli, tmp_path, _task(tmp_path / "t", spec))
    assert "field 'languages.de.query_template' of task t, language de: uses unknown placeholder(s) ['topic']" in msg
    spec["fields"] = ["text", "topic"]  # declared and used, but the items do not have it
    spec["languages"]["en"]["query_template"] = '{text} {topic}\nAnswer: "'
    task = _task(tmp_path / "t2", spec)
    msg = _refused(cli, tmp_path, task)
    assert msg == f"{task / 'en.jsonl'}:1: missing field 'topic'"


def test_gold_label_that_differs_from_english_is_refused(cli, tmp_path):
    task = _task(tmp_path / "t", files={"en": EN, "de": [DE[0], {**DE[1], "label": "yes"}, {**DE[2], "label": "yes"}]})
    msg = _refused(cli, tmp_path, task)
    assert msg == (f"{task / 'de.jsonl'}:2: item index 1 has label 'yes' in language de but 'no' in en.jsonl:2 "
                   "(task t; gold labels come from the English file): fix one of them, or leave 'label' out of de.jsonl")


def test_language_with_fewer_items_than_english_is_refused(cli, tmp_path):
    task = _task(tmp_path / "t", files={"en": EN, "de": [DE[0], DE[2]]})
    msg = _refused(cli, tmp_path, task)
    assert msg.startswith(f"{task / 'de.jsonl'}: item index(es) 1 of en.jsonl missing (2 items, en.jsonl has 3; "
                          "task t, language de)"), msg
    # --limit does not hide it: the task means would still be over other item sets with --all
    assert "item index(es) 1 of en.jsonl missing" in _refused(cli, tmp_path, task, "--limit", "1")


def test_items_in_another_order_than_english_are_refused(cli, tmp_path):
    """Same indices in another order: --limit would take other items in each language."""
    task = _task(tmp_path / "t", files={"en": EN, "de": [DE[1], DE[0], DE[2]]})
    msg = _refused(cli, tmp_path, task, "--limit", "1")
    assert msg.startswith(f"{task / 'de.jsonl'}:1: item index 1 where en.jsonl:1 has 0 (task t, language de)"), msg


def test_without_english_the_first_language_is_the_reference(tmp_path):
    spec = _copy(SPEC)
    del spec["languages"]["en"]
    spec["languages"]["fr"] = _copy(spec["languages"]["de"])
    task = str(_task(tmp_path / "t", spec, {"de": EN, "fr": [{**r, "label": None} for r in EN]}))
    assert data.load_task(task).reference_language == "de"
    assert [it.label for it in data.load_items(task, "fr")] == [r["label"] for r in EN]
    task2 = str(_task(tmp_path / "t2", spec, {"de": EN, "fr": [{**EN[0], "label": "no"}, EN[1], EN[2]]}))
    with pytest.raises(AlignlensError, match=r"fr\.jsonl:1: item index 0 has label 'no' in language fr but 'yes' in "
                                             r"de\.jsonl:1 \(task t2; gold labels come from de\.jsonl, the reference"):
        data.load_items(task2, "fr")


@pytest.mark.parametrize("words, message", [
    ({}, "field 'languages.de.label_words' is empty (task t, language de): give each label's word in this "
         "language, or leave the field out"),
    ({"yes": "ja", "no": "ja "}, "field 'languages.de.label_words' gives labels 'yes' and 'no' the same word 'ja' "
                                 "(task t, language de): each label needs its own word"),
])
def test_empty_or_repeated_label_words_are_refused(cli, tmp_path, words, message):
    spec = _copy(SPEC)
    spec["languages"]["de"]["label_words"] = words
    task = _task(tmp_path / "t", spec)
    assert _refused(cli, tmp_path, task) == f"{task / 'task.json'}: {message}"


# ---- item 13: absurdly long fields ----------------------------------------------------------


def test_absurdly_long_field_is_refused_before_the_model_loads(cli, tmp_path):
    long_text = "word " * 8000  # 40,000 characters: minutes per forward pass on a CPU
    task = _task(tmp_path / "t", files={"en": EN, "de": [DE[0], DE[1], {**DE[2], "text": long_text}]})
    msg = _refused(cli, tmp_path, task, command="analyze")
    assert msg == (f"{task / 'de.jsonl'}:3: field 'text' has 40,000 characters, more than the limit of "
                   f"{data.MAX_FIELD_CHARS:,} per field (task.json 'max_field_chars' raises it)")
    spec = _copy(SPEC)
    spec["max_field_chars"] = 50_000  # a task with long texts says so
    task = _task(tmp_path / "t2", spec, files={"en": EN, "de": [DE[0], DE[1], {**DE[2], "text": long_text}]})
    assert data.load_items(str(task), "de")[2].fields["text"] == long_text
    spec["max_field_chars"] = 0
    with pytest.raises(AlignlensError, match=r"field 'max_field_chars' must be a whole number of characters >= 1, not 0"):
        data.load_task(str(_task(tmp_path / "t3", spec)))


def test_bundled_fields_are_well_under_the_limit():
    longest = max(len(text) for t in data.BUNDLED_TASKS for lang in data.load_task(t).languages
                  for it in data.load_items(t, lang) for text in it.fields.values())
    assert 1000 < longest < data.MAX_FIELD_CHARS / 4


# ---- item 25: the --balanced hint -----------------------------------------------------------


def test_balanced_hint_never_suggests_an_invalid_limit(cli, tmp_path):
    task = _task(tmp_path / "t")  # items 0 and 2 are "yes", item 1 "no"
    msg = _refused(cli, tmp_path, task, "--balanced", "--items", "0,2", "--limit", "2")
    assert "--limit to 0" not in msg
    assert msg.endswith("the selected items cannot be balanced at any --limit (label 'no' has none); widen --items"), msg
    msg = _refused(cli, tmp_path, task, "--balanced", "--items", "0-2", "--limit", "4")
    assert msg.endswith("lower --limit to 2 or widen --items"), msg  # a valid limit: one item of each label


# ---- item 33: target-language label words that collide with the English ones ------------------


def _documented_collisions() -> dict[tuple[str, str], dict[str, str]]:
    """The data README's table: (task, label) -> {lang: "identical" | "same first character"}."""
    text = (data.data_root() / "README.md").read_text(encoding="utf-8")
    out: dict[tuple[str, str], dict[str, str]] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"\| `(\w+)` \| (\w+) \| (.+) \| (.+) \|", line)
        if not m:
            continue
        task, label, same, first = m.groups()
        row = {lang: "identical" for lang in same.split() if same != "—"}
        for part in [] if first == "—" else first.split(", "):
            lang, word = re.fullmatch(r"(\w+) \((.+)\)", part).groups()
            assert data.load_task(task).prompts[lang].label_words[label] == word, (task, lang, label)
            row[lang] = "same first character"
        out[(task, label)] = row
    return out


def test_data_readme_lists_every_colliding_label_word():
    computed = {(t, lab): {lang: data.label_word_collisions(data.load_task(t), lang)[lab]
                           for lang in data.load_task(t).languages if lab in data.label_word_collisions(data.load_task(t), lang)}
                for t in data.BUNDLED_TASKS for lab in data.load_task(t).labels}
    assert _documented_collisions() == computed
    assert computed[("snli", "entailment")] == {"no": "identical", "ms": "identical"}  # the audit's case


def test_label_word_collisions_rule():
    spec = data.load_task("snli")
    assert data.label_word_collisions(spec, "no") == {"entailment": "identical", "neutral": "same first character"}
    assert data.label_word_collisions(spec, "zh") == {} and data.label_word_collisions(spec, "en") == {}


# ---- item 34: `data show` shows the lens (target-label) prompt ------------------------------


def test_data_show_prints_the_target_label_prompt(cli, tmp_path):
    task = _task(tmp_path / "t")
    code, out, _ = cli("data", "show", str(task), "de", "--prompts", "target-labels")
    assert code == 0
    assert 'c\nAntwort: "ja"\nd\nAntwort: "nein"\nxx\nAntwort: "' in out  # exactly the lens prompt, not wrapped
    assert 'Antwort: "yes"' not in out and "target-labels prompt" in out
    assert "target-language label words: yes -> ja, no -> nein" in out
    code, out, _ = cli("data", "show", str(task), "de", "--prompts", "both")
    assert code == 0 and 'Antwort: "yes"' in out and 'Antwort: "ja"' in out
    code, out, _ = cli("data", "show", "snli", "no", "--prompts", "target-labels")
    assert code == 0 and 'Svar: "entailment"' in out and 'Svar: "nøytral"' in out
    assert "entailment -> entailment (the English word itself: the logit lens drops these items)" in out


def test_data_show_refuses_what_it_cannot_show(cli, tmp_path):
    code, _, err = cli("data", "show", "snli", "de", "--prompts", "lens")
    assert code == 2 and err.strip() == "error: --prompts: unknown prompt 'lens' (use evaluation, target-labels or both)"
    spec = _copy(SPEC)
    del spec["languages"]["de"]["label_words"]
    task = _task(tmp_path / "t", spec)
    code, out, err = cli("data", "show", str(task), "de", "--prompts", "target-labels")
    assert code == 2 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "has no word for label 'yes'" in err
