"""Bundled data, user task files and their validation."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from alignlens import AlignlensError, data
from alignlens.languages import PAPER_LANGUAGES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "multilingual-learner"


def test_bundled_tasks_have_twenty_parallel_languages():
    for name, n, shots in (("emotion", 500, 2), ("snli", 600, 6), ("paws", 500, 4)):
        spec = data.load_task(name)
        assert spec.languages == PAPER_LANGUAGES
        assert spec.shots == shots
        en = data.load_items(spec, "en")
        assert len(en) == n
        for lang in ("zh", "hi", "th", "bn"):
            items = data.load_items(spec, lang)
            assert [it.index for it in items] == [it.index for it in en]
            assert [it.label for it in items] == [it.label for it in en]


@pytest.mark.skipif(not SHARED.is_dir(), reason="the paper's original data folder is not here")
def test_bundle_matches_original_files():
    prompts = json.loads((SHARED / "prompts.json").read_text(encoding="utf-8"))
    original = json.loads((SHARED / "snli" / "snli_de600_test.json").read_text(encoding="utf-8"))
    items = data.load_items("snli", "de")
    spec = data.load_task("snli")
    words = prompts["snli"]["languages"]["de"]["test_file_label_words"]
    for it, row in zip(items, original):
        assert it.fields == {"premise": row["premise"], "hypothesis": row["hypothesis"]}
        assert words[it.label] == row["answer"].strip()
    lp = prompts["snli"]["languages"]["de"]
    assert spec.prompts["de"].demonstrations == lp["demonstrations"]
    assert data.build_prompt(spec, "de", items[0]) == lp["demonstrations"] + "\n" + lp["query_template"].format(**original[0])
    qt = json.loads((SHARED / "snli" / "snli_zh10k_train_question.json").read_text(encoding="utf-8"))
    pairs = data.load_question_translation(["zh"])
    assert [(p.input, p.answer) for p in pairs] == [(r["input"], r["answer"]) for r in qt]


def test_prompt_is_demonstrations_newline_query():
    spec = data.load_task("emotion")
    it = data.load_items(spec, "th", limit=1)[0]
    prompt = data.build_prompt(spec, "th", it)
    assert prompt.startswith(spec.prompts["th"].demonstrations + "\n" + it.fields["input"])
    assert prompt.endswith('"')
    assert prompt.startswith(data.prompt_prefix(spec, "th"))


def test_limit_takes_first_items():
    assert [it.index for it in data.load_items("snli", "sw", limit=7)] == list(range(7))


def test_question_translation_sampling_is_seeded():
    a = data.load_question_translation(["zh", "de"], per_language=20, seed=3)
    b = data.load_question_translation(["zh", "de"], per_language=20, seed=3)
    c = data.load_question_translation(["zh", "de"], per_language=20, seed=4)
    assert a == b and a != c and len(a) == 40
    assert all(p.input.endswith("\nTranslate the input from Chinese to English:\n") for p in a[:20])
    assert all(p.answer.startswith("Premise: ") and p.answer.endswith('Answer: "') for p in a)
    with pytest.raises(AlignlensError, match="fr"):
        data.load_question_translation(["fr"])


def _write_task(folder: Path, spec: dict, files: dict[str, list]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.json").write_text(json.dumps(spec), encoding="utf-8")
    for lang, rows in files.items():
        lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
        (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


SPEC = {"labels": ["yes", "no"], "fields": ["text"],
        "languages": {"en": {"demonstrations": "a\nAnswer: \"yes\"", "query_template": "{text}\nAnswer: \""},
                      "de": {"demonstrations": "b\nAntwort: \"yes\"", "query_template": "{text}\nAntwort: \""}}}


def test_user_task_gold_comes_from_english_file(tmp_path):
    folder = _write_task(tmp_path / "t", SPEC, {
        "en": [{"index": 0, "label": "yes", "text": "x"}, {"index": 1, "label": "no", "text": "y"}],
        "de": [{"index": 0, "label": "yes", "text": "xx"}, {"index": 1, "text": "yy"}],
    })
    items = data.load_items(str(folder), "de")
    assert [it.label for it in items] == ["yes", "no"]
    assert data.build_prompt(data.load_task(str(folder)), "de", items[1]) == 'b\nAntwort: "yes"\nyy\nAntwort: "'


@pytest.mark.parametrize("rows, message", [
    (['{"index": 0, "label": "yes", "text": "x"}', "{not json"], r"de\.jsonl:2: invalid JSON"),
    ([{"index": 0, "label": "yes"}], r"de\.jsonl:1: missing field 'text'"),
    ([{"index": 0, "label": "maybe", "text": "x"}], r"de\.jsonl:1: field 'label' is 'maybe'"),
    ([{"index": 0, "text": 3}], r"de\.jsonl:1: field 'text' must be a string"),
    ([{"index": 0, "text": "a"}, {"index": 0, "text": "b"}], r"de\.jsonl:2: field 'index' repeats 0"),
])
def test_bad_item_files_name_file_line_field(tmp_path, rows, message):
    folder = _write_task(tmp_path / "t", SPEC, {"en": [{"index": 0, "label": "yes", "text": "x"}, {"index": 1, "label": "no", "text": "z"}], "de": rows})
    with pytest.raises(AlignlensError, match=message):
        data.load_items(str(folder), "de")


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("labels"), "missing field 'labels'"),
    (lambda s: s["languages"]["de"].pop("query_template"), "missing field 'languages.de.query_template'"),
    (lambda s: s["languages"]["de"].update(query_template="{txt}"), "unknown placeholder"),
    (lambda s: s.update(labels=["yes", "yes"]), "duplicates"),
])
def test_bad_task_specs(tmp_path, mutate, message):
    spec = json.loads(json.dumps(SPEC))
    mutate(spec)
    folder = _write_task(tmp_path / "t", spec, {"en": [{"index": 0, "label": "yes", "text": "x"}]})
    with pytest.raises(AlignlensError, match=message):
        data.load_task(str(folder))


def test_unknown_task_and_language():
    with pytest.raises(AlignlensError, match="unknown task 'nope'"):
        data.load_task("nope")
    with pytest.raises(AlignlensError, match="no prompt for language 'xx'"):
        data.load_items("snli", "xx")


def test_translation_file_validation(tmp_path):
    good = tmp_path / "ok.jsonl"
    good.write_text(json.dumps({"lang": "de", "text": "Hallo", "english": "Hello"}) + "\n"
                    + json.dumps({"input": "i", "answer": "a"}) + "\n", encoding="utf-8")
    pairs = data.load_translation_file(good)
    assert pairs[0].input == "Hallo\nTranslate the input from German to English:\n" and pairs[0].answer == "Hello"
    assert (pairs[1].input, pairs[1].answer) == ("i", "a")
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"lang": "de", "text": "Hallo", "english": "Hello"}) + "\n")
        fh.write(json.dumps({"lang": "de", "text": "Hallo"}) + "\n")
    with pytest.raises(AlignlensError, match=r"bad\.jsonl\.gz:2: missing field 'english'"):
        data.load_translation_file(bad)


def test_bundled_label_words_match_their_meaning():
    """The Norwegian SNLI test file swaps 'neutral' and 'contradiction'; the bundle corrects it."""
    from alignlens import data

    no = data.load_task("snli").prompts["no"].label_words
    assert no == {"entailment": "entailment", "neutral": "nøytral", "contradiction": "motsigelse"}
    for task in data.BUNDLED_TASKS:
        spec = data.load_task(task)
        for lang, prompt in spec.prompts.items():
            assert set(prompt.label_words) == set(spec.labels), (task, lang)
            assert len(set(prompt.label_words.values())) == len(spec.labels), (task, lang)  # distinct words


def test_bundle_tool_checks_words_against_english_gold_item_by_item(tmp_path):
    """tools/bundle_data.py stops when a language's answers disagree with the English gold labels."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "multilingual-learner"
    if not shared.is_dir():
        pytest.skip("the paper's data folder (../shared) is not beside this checkout")
    src = tmp_path / "src"
    shutil.copytree(shared, src)
    rows = json.loads((src / "ap_emotion" / "emotion_de500_test.json").read_text(encoding="utf-8"))
    rows[3]["answer"] = "negativ" if rows[3]["answer"].strip() == "positiv" else "positiv"
    (src / "ap_emotion" / "emotion_de500_test.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    tool = Path(__file__).resolve().parents[1] / "tools" / "bundle_data.py"
    code = f"import runpy, sys; sys.argv=['x', {str(src)!r}]; m = runpy.run_path({str(tool)!r}, run_name='lib'); " \
           f"m['main'](__import__('pathlib').Path({str(src)!r}), __import__('pathlib').Path({str(tmp_path / 'out')!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "emotion/de: 1 answers disagree" in proc.stderr + proc.stdout, proc.stderr
