"""Task-matched question alignment without leakage (issue 12 §4): the task's own question pairs,
the copy control, --items/--balanced selection, and the refusal to evaluate trained items."""

from __future__ import annotations

import collections
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignlens import AlignlensError, data
from alignlens.config import AnalyzeConfig, EvalConfig, format_items, parse_items
from alignlens.plan import resolve_plan
from alignlens.results import write_json
from alignlens.results.schema import read_training_split
from alignlens.train import TrainConfig
from alignlens.train.examples import data_source, load_pairs, split_pairs

TASKS = data.data_root() / "tasks"


def raw_rows(task: str, lang: str) -> list[dict]:
    """The test file's lines as written (read here without alignlens's loaders)."""
    with gzip.open(TASKS / task / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pair_for(pairs, lang: str, answer: str):
    return next(p for p in pairs if p.lang == lang and p.answer == answer)


# ---- pairs ------------------------------------------------------------------------------------


def test_emotion_pair_is_the_zh_question_then_the_instruction_and_the_english_question():
    zh, en = raw_rows("emotion", "zh")[250], raw_rows("emotion", "en")[250]
    assert zh["index"] == en["index"] == 250
    pairs = data.load_task_question_translation("emotion", ["zh"], [250, 251])
    assert [p.lang for p in pairs] == ["zh", "zh"]
    assert pairs[0].input == zh["input"] + '\n情感: "' + "\nTranslate the input from Chinese to English:\n"
    assert pairs[0].answer == en["input"] + '\nEmotion: "'


def test_snli_pair_in_german_fills_both_fields():
    de, en = raw_rows("snli", "de")[300], raw_rows("snli", "en")[300]
    (pair,) = data.load_task_question_translation("snli", ["de"], [300])
    assert pair.input == (f"Prämisse: {de['premise']}\nHypothese: {de['hypothesis']}\nAntwort: \""
                          "\nTranslate the input from German to English:\n")
    assert pair.answer == f"Premise: {en['premise']}\nHypothesis: {en['hypothesis']}\nAnswer: \""


@pytest.mark.parametrize("task", data.BUNDLED_TASKS)
def test_no_answer_after_the_final_quote(task):
    """Inputs and targets are questions only: they end at the answer's opening quote, so no gold
    label word (English or the language's own) follows it, and no demonstration (which carries
    quoted labels) is included."""
    spec = data.load_task(task)
    cfg = TrainConfig.from_preset("default", task=task, languages="zh,de", per_language=None)
    pairs = load_pairs(cfg)
    assert len(pairs) == 2 * len(cfg.train_indices())
    gold = {it.index: it.label for it in data.load_items(spec, "en")}
    english = {data.task_query(spec, "en", it): it.index for it in data.load_items(spec, "en")}
    for p in pairs:
        head, tail = p.input.rsplit('"', 1)
        assert tail == data.translation_instruction(p.lang)
        assert p.answer.endswith('"')
        words = set(spec.labels) | set(spec.prompts[p.lang].label_words.values())
        assert gold[english[p.answer]] in spec.labels  # the target is the English question of a known item
        for text in (head, p.answer):
            assert not any(f'"{w}"' in text for w in words), text[-200:]


def test_copy_control_pairs_are_english_copies_of_the_same_items_and_split():
    aligned = TrainConfig.from_preset("default", task="emotion", languages="zh,de", per_language=30)
    control = TrainConfig.from_preset("default", task="emotion", languages="zh,de", per_language=30, control="copy")
    a, c = load_pairs(aligned), load_pairs(control)
    assert [p.lang for p in c] == [p.lang for p in a] and [p.answer for p in c] == [p.answer for p in a]
    for p in c:
        assert p.input == p.answer + "\nTranslate the input from English to English:\n"
    en250 = raw_rows("emotion", "en")[250]["input"] + '\nEmotion: "'
    full = load_pairs(TrainConfig.from_preset("default", task="emotion", languages="zh", control="copy",
                                              train_items="250"))
    assert [(p.input, p.answer) for p in full] == [
        (en250 + "\nTranslate the input from English to English:\n", en250)]
    # the same validation items, so the same steps
    (ta, va), (tc, vc) = split_pairs(a, 0.1, 0), split_pairs(c, 0.1, 0)
    assert [p.answer for p in va] == [p.answer for p in vc] and len(ta) == len(tc)
    assert data_source(control)["control"] == "copy" and data_source(aligned)["control"] is None


def test_data_source_says_same_task_or_bundled():
    task = data_source(TrainConfig.from_preset("default", task="paws"))
    assert (task["source"], task["task"], task["train_items"]) == ("task questions", "paws", "250-499")
    assert "same-task when reading paws" in task["description"]
    bundled = data_source(TrainConfig.from_preset("default"))
    assert bundled["source"] == "bundled SNLI question-translation set" and bundled["task"] is None
    assert "cross-task for emotion" in bundled["description"]


def test_train_config_default_split_is_the_second_half_and_options_are_checked():
    for task, n in (("emotion", 500), ("snli", 600), ("paws", 500)):
        cfg = TrainConfig.from_preset("default", task=task)
        assert cfg.train_items == f"{n // 2}-{n - 1}" and cfg.resolved_languages() == ["zh", "de"]
    with pytest.raises(AlignlensError, match="--train-items needs --task"):
        TrainConfig.from_preset("default", train_items="0-9")
    with pytest.raises(AlignlensError, match="English is the translation target"):
        TrainConfig.from_preset("default", task="emotion", languages="en,de")
    with pytest.raises(AlignlensError, match=r"not in task emotion \(500-509"):
        TrainConfig.from_preset("default", task="emotion", train_items="495-509")
    with pytest.raises(AlignlensError, match="unknown control"):
        TrainConfig.from_preset("default", control="paste")
    with pytest.raises(AlignlensError, match="cannot be combined with --data"):
        TrainConfig.from_preset("default", control="copy", data_files=["x.jsonl"])


# ---- item selection ---------------------------------------------------------------------------


def test_parse_and_format_items():
    assert parse_items("10-12, 1,3") == (1, 3, 10, 11, 12)
    assert format_items((12, 1, 10, 3, 11)) == "1,3,10-12"
    assert format_items(parse_items("0-249")) == "0-249"
    for bad, msg in (("5-3", "ends before"), ("-1", "negative"), ("1,1", "more than once"), ("x", "not an item"),
                     ("", "empty"), ("0-5,3", "more than once")):
        with pytest.raises(AlignlensError, match=msg):
            parse_items(bad)
    assert EvalConfig(items="3, 1-2").items == "1-3"
    cfg = AnalyzeConfig(items="0-4", balanced=True, limit=4)
    assert cfg.eval_config().items == "0-4" and cfg.eval_config().balanced
    assert cfg.to_dict()["items"] == "0-4" and cfg.to_dict()["balanced"] is True


def test_items_are_applied_before_limit():
    spec = data.load_task("emotion")
    items = data.load_items(spec, "de")
    chosen = EvalConfig(tasks=("emotion",), items="10-19,40", limit=5).select_items(items, spec.labels)
    assert [it.index for it in chosen] == [10, 11, 12, 13, 14]
    chosen = EvalConfig(tasks=("emotion",), items="40,10-12", limit=None).select_items(items, spec.labels)
    assert [it.index for it in chosen] == [10, 11, 12, 40]
    with pytest.raises(AlignlensError, match=r"task emotion, language de: --items lists 1 item.*\(500"):
        EvalConfig(items="499-500").select_items(items, spec.labels, "task emotion, language de")


def test_balanced_takes_the_first_items_of_each_label_in_index_order():
    spec = data.load_task("snli")
    en = raw_rows("snli", "en")
    chosen = EvalConfig(tasks=("snli",), limit=30, balanced=True).select_items(data.load_items(spec, "hi"), spec.labels)
    counts = collections.Counter(it.label for it in chosen)
    assert counts == {"entailment": 10, "neutral": 10, "contradiction": 10}
    expected = sorted(i for lab in spec.labels for i in [r["index"] for r in en if r["label"] == lab][:10])
    assert [it.index for it in chosen] == expected
    # the unbalanced first 30 are not balanced (so the test can tell the two apart)
    assert collections.Counter(r["label"] for r in en[:30]) != counts
    # within --items, and --all: as many per label as the rarest has
    emo = data.load_task("emotion")
    chosen = EvalConfig(tasks=("emotion",), items="0-249", limit=None, balanced=True).select_items(
        data.load_items(emo, "de"), emo.labels)
    rare = min(collections.Counter(r["label"] for r in raw_rows("emotion", "en")[:250]).values())
    assert collections.Counter(it.label for it in chosen) == {"positive": rare, "negative": rare}
    with pytest.raises(AlignlensError, match="multiple of the 3 labels .*use 30 or 33"):
        EvalConfig(limit=31, balanced=True).select_items(data.load_items(spec, "hi"), spec.labels, "task snli")
    with pytest.raises(AlignlensError, match="label 'negative' has only"):
        EvalConfig(items="0-3", limit=4, balanced=True).select_items(data.load_items(emo, "de"), emo.labels)


# ---- no leakage -------------------------------------------------------------------------------


@pytest.mark.parametrize("task,held_out", [("emotion", "0-249"), ("snli", "0-299"), ("paws", "0-249")])
def test_default_split_is_disjoint_from_the_first_half_evaluation(task, held_out):
    """No English question trained on (the pairs' targets) is an evaluated item's question, in any
    language's items."""
    spec = data.load_task(task)
    pairs = load_pairs(TrainConfig.from_preset("default", task=task, per_language=None))
    targets = {p.answer for p in pairs}
    cfg = EvalConfig(tasks=(task,), items=held_out, limit=None)
    en = {it.index: it for it in data.load_items(spec, "en")}
    for lang in ("en", "zh", "de", "hi"):
        chosen = cfg.select_items(data.load_items(spec, lang), spec.labels)
        assert len(chosen) == len(en) // 2
        assert not {data.task_query(spec, "en", en[it.index]) for it in chosen} & targets
    resolve_plan(cfg, [])  # nothing to check without a trained model


def fake_training_output(folder: Path, **data_keys) -> Path:
    folder.mkdir(parents=True)
    write_json(folder / "manifest.json", {"data": {"languages": ["zh", "de"], **data_keys},
                                          "options": {"task": data_keys.get("task"),
                                                      "train_items": data_keys.get("train_items")}})
    return folder


def test_refusal_names_task_overlap_and_the_held_out_items(tmp_path):
    model = fake_training_output(tmp_path / "aligned", task="emotion", train_items="250-499",
                                 source="task questions")
    assert read_training_split(model)["train_items"] == tuple(range(250, 500))
    resolve_plan(EvalConfig(tasks=("emotion", "snli"), items="0-249", limit=None), [str(model)])
    resolve_plan(EvalConfig(tasks=("snli",), items="250-299", limit=None), [str(model)])  # other task
    with pytest.raises(AlignlensError) as err:
        resolve_plan(AnalyzeConfig(tasks=("emotion",), languages=("de",), items="240-259", limit=None),
                               ["gemma-3-270m", str(model)])
    msg = str(err.value)
    assert "task emotion" in msg and "10 of the 20 emotion items" in msg and "first: 250, 251, 252, 253, 254" in msg
    assert "--items 0-249" in msg and "\n" not in msg
    (model / "merged").mkdir()  # the merged/ model of a training output is checked against its parent's manifest
    with pytest.raises(AlignlensError, match="10 of the 20"):
        resolve_plan(EvalConfig(tasks=("emotion",), languages=("de",), items="240-259", limit=None),
                               [str(model / "merged")])
    # the first 300 of every language: items 250-299 overlap
    with pytest.raises(AlignlensError, match="50 of the 300"):
        resolve_plan(EvalConfig(tasks=("emotion",), limit=300), [str(model)])
    # a manifest that records the split only in its options (read the same way)
    other = tmp_path / "opts"
    other.mkdir()
    write_json(other / "manifest.json", {"data": {"languages": ["de"]}, "options": {"task": "paws", "train_items": "0-9"}})
    with pytest.raises(AlignlensError, match="task paws items 0-9: 1 of the 1"):
        resolve_plan(EvalConfig(tasks=("paws",), items="9", limit=None), [str(other)])
    assert read_training_split(tmp_path / "nothing-here") == {}


# ---- end to end on the tiny model -------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignlens.cli.main", *args], capture_output=True, text=True,
                          timeout=900)


def test_cli_train_on_task_items_then_refuse_them(tmp_path):
    from fixtures import save_tiny_base

    tiny = save_tiny_base(tmp_path / "tiny", "gemma3", seed=0)
    aligned = tmp_path / "aligned"
    proc = run_cli("train", "--model", str(tiny), "--out", str(aligned), "--task", "emotion", "--languages", "de",
                   "--train-items", "100-119", "--per-language", "20", "--batch-size", "4", "--max-len", "1024",
                   "--eval-every", "0")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((aligned / "manifest.json").read_text())
    assert manifest["options"]["task"] == "emotion" and manifest["options"]["train_items"] == "100-119"
    assert manifest["data"]["n_train"] + manifest["data"]["n_val"] == 20
    split = read_training_split(aligned)
    assert split["task"] == "emotion" and split["train_items"] == tuple(range(100, 120))

    common = ("--model", str(tiny), "--compare", str(aligned), "--tasks", "emotion", "--languages", "en,de",
              "--limit", "6", "--batch-size", "3", "--no-report")
    proc = run_cli("analyze", *common, "--items", "100-105", "--out", str(tmp_path / "leaky"))
    assert proc.returncode == 2, proc.stderr
    assert "task emotion" in proc.stderr and "6 of the 6" in proc.stderr and "first: 100, 101" in proc.stderr
    assert "--items 0-99,120-499" in proc.stderr
    assert not (tmp_path / "leaky").exists()
    proc = run_cli("eval", "--model", str(aligned), "--tasks", "emotion", "--languages", "de", "--items", "90-110",
                   "--limit", "20")
    assert proc.returncode == 2 and "10 of the 20 emotion items" in proc.stderr, proc.stderr

    out = tmp_path / "held-out"
    proc = run_cli("analyze", *common, "--items", "0-5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for run in ("base", "aligned"):
        rows = [json.loads(line) for line in (out / run / "predictions.jsonl").read_text().splitlines()]
        assert sorted((r["lang"], r["index"]) for r in rows) == [(lang, i) for lang in ("de", "en") for i in range(6)]
        options = json.loads((out / run / "manifest.json").read_text())["options"]
        assert options["items"] == "0-5" and options["balanced"] is False


def test_cli_eval_uses_the_selected_items(tmp_path):
    from fixtures import save_tiny_base

    tiny = save_tiny_base(tmp_path / "tiny", "gemma3", seed=0)
    out = tmp_path / "e"
    proc = run_cli("eval", "--model", str(tiny), "--tasks", "emotion", "--languages", "de", "--items", "3-9",
                   "--limit", "4", "--balanced", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    gold = {r["index"]: r["label"] for r in raw_rows("emotion", "en")}
    expected = sorted([i for i in range(3, 10) if gold[i] == "positive"][:2] +
                      [i for i in range(3, 10) if gold[i] == "negative"][:2])
    assert [r["index"] for r in rows] == expected
