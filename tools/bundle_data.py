"""Rebuild the bundled data in src/alignlens/resources/data from the paper's data folder.

Usage: python tools/bundle_data.py ../shared/data/multilingual-learner

Writes, per task, `tasks/<task>/task.json` (spec: target-language label words, checked item by
item against the English gold labels and corrected where their meaning is wrong (CORRECTIONS),
fields, templates and demonstrations per language) and `tasks/<task>/<lang>.jsonl.gz` (items, with the gold
English label taken from the English file, since the test sets are parallel), and the
SNLI question-translation sets as `qt/snli/<lang>.jsonl.gz` ({"text", "english"}).
Output is deterministic (gzip mtime 0), so re-running yields identical bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

LANGUAGE_NAMES = {
    "en": "English", "zh": "Chinese", "de": "German", "fr": "French", "es": "Spanish",
    "it": "Italian", "nl": "Dutch", "ja": "Japanese", "ru": "Russian", "sv": "Swedish",
    "sl": "Slovenian", "pl": "Polish", "bg": "Bulgarian", "no": "Norwegian", "ms": "Malay",
    "is": "Icelandic", "hi": "Hindi", "th": "Thai", "sw": "Swahili", "bn": "Bengali",
}
TASKS = {
    # task: (folder, file prefix, items per language, item fields, shots, description, source, licence)
    "emotion": ("ap_emotion", "emotion_", 500, ["input"], 2, "Sentiment (Amazon Reviews Polarity)",
                "Amazon Reviews Polarity (Zhang et al. 2015, from McAuley & Leskovec 2013)", "Apache-2.0"),
    "snli": ("snli", "snli_", 600, ["premise", "hypothesis"], 6, "Natural language inference (SNLI)",
             "SNLI 1.0 (Bowman et al. 2015)", "CC BY-SA 4.0"),
    "paws": ("paws", "paws_", 500, ["sentence1", "sentence2"], 4, "Paraphrase identification (PAWS)",
             "PAWS Wiki labeled_final (Zhang et al. 2019)",
             "free for any purpose, acknowledgement of Google LLC appreciated"),
}
QT_LANGUAGES = ["de", "es", "it", "sw", "zh"]
#: Target-language label words that the original test files (and the paper's scripts) got wrong.
#: They are consistent item by item with the English gold labels, so only their meaning shows the
#: error. Norwegian SNLI: the test file writes "motsigelse" (= contradiction) for every neutral item
#: and "nøytral" (= neutral) for every contradiction item; the logit lens would otherwise measure the
#: other label's word as the "target-language" answer.
CORRECTIONS = {("snli", "no"): {"neutral": "nøytral", "contradiction": "motsigelse"}}


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def main(src: Path, dst: Path) -> None:
    prompts = json.loads((src / "prompts.json").read_text(encoding="utf-8"))
    for task, (folder, prefix, n, fields, shots, desc, source, licence) in TASKS.items():
        spec_langs = prompts[task]["languages"]
        english = json.loads((src / folder / f"{prefix}en{n}_test.json").read_text(encoding="utf-8"))
        to_label_en = {w: lab for lab, w in spec_langs["en"]["test_file_label_words"].items()}
        gold = [to_label_en[row["answer"].strip()] for row in english]
        languages = {}
        for lang in LANGUAGE_NAMES:
            ls = spec_langs[lang]
            rows = json.loads((src / folder / f"{prefix}{lang}{n}_test.json").read_text(encoding="utf-8"))
            assert len(rows) == n, (task, lang, len(rows))
            to_label = {w: lab for lab, w in ls["test_file_label_words"].items()}
            bad = [i for i, (r, g) in enumerate(zip(rows, gold)) if to_label.get(r["answer"].strip()) != g]
            if bad:  # the word -> label mapping must agree with the parallel English gold, item by item
                raise SystemExit(f"{task}/{lang}: {len(bad)} answers disagree with the English gold labels "
                                 f"(first items {bad[:5]}); fix test_file_label_words")
            words = {**ls["test_file_label_words"], **CORRECTIONS.get((task, lang), {})}
            items = [{"index": i, "label": g, **{f: r[f] for f in fields}} for i, (r, g) in enumerate(zip(rows, gold))]
            write_jsonl_gz(dst / "tasks" / task / f"{lang}.jsonl.gz", items)
            languages[lang] = {
                "demonstrations": ls["demonstrations"],
                "query_template": ls["query_template"],
                "label_words": {lab: words[lab] for lab in prompts[task]["labels_en"]},
            }
        spec = {
            "name": task, "description": desc, "labels": prompts[task]["labels_en"], "fields": fields,
            "shots": shots, "source": source, "licence": licence, "languages": languages,
        }
        (dst / "tasks" / task / "task.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    english_side = None
    for lang in QT_LANGUAGES:
        rows = json.loads((src / "snli" / f"snli_{lang}10k_train_question.json").read_text(encoding="utf-8"))
        suffix = f"\nTranslate the input from {LANGUAGE_NAMES[lang]} to English:\n"
        out = []
        for r in rows:
            assert r["input"].endswith(suffix), (lang, r["input"][-80:])
            out.append({"text": r["input"][: -len(suffix)], "english": r["answer"]})
        eng = [r["english"] for r in out]
        assert english_side is None or english_side == eng, "English side differs across languages"
        english_side = eng
        write_jsonl_gz(dst / "qt" / "snli" / f"{lang}.jsonl.gz", out)
    (dst / "languages.json").write_text(json.dumps(LANGUAGE_NAMES, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/multilingual-learner")
    main(source, Path(__file__).resolve().parents[1] / "src" / "alignlens" / "resources" / "data")
