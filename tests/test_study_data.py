"""Training and evaluation data the study's arms need (issue 21): another translation target
(`TrainConfig.target_language`) and the irrelevant-label evaluation variant."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from alignlens import AlignlensError, data
from alignlens.train import TrainConfig
from alignlens.train.examples import data_source, load_pairs
from alignlens.engine import reference_probs

TASKS = data.data_root() / "tasks"


def raw_rows(task: str, lang: str) -> list[dict]:
    """The test file's lines as written (read without alignlens's loaders)."""
    with gzip.open(TASKS / task / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ---- target language -----------------------------------------------------------------------------


def test_target_zh_pairs_are_the_x_question_then_the_instruction_and_the_chinese_question():
    de, zh = raw_rows("emotion", "de")[260], raw_rows("emotion", "zh")[260]
    assert de["index"] == zh["index"] == 260
    (pair,) = data.load_task_question_translation("emotion", ["de"], [260], target="zh")
    assert pair.input == de["input"] + '\nEmotion: "' + "\nTranslate the input from German to Chinese:\n"
    assert pair.answer == zh["input"] + '\n情感: "'
    # English may be a source language when it is not the target
    (en_pair,) = data.load_task_question_translation("emotion", ["en"], [260], target="zh")
    assert en_pair.input.endswith("\nTranslate the input from English to Chinese:\n") and en_pair.answer == pair.answer


def test_train_config_target_language_pairs_manifest_and_default():
    cfg = TrainConfig.from_preset("default", task="emotion", languages="de,en", per_language=5, target_language="zh")
    pairs = load_pairs(cfg)
    assert len(pairs) == 10 and {p.lang for p in pairs} == {"de", "en"}
    assert all(p.input.endswith(" to Chinese:\n") and p.answer.endswith('\n情感: "') for p in pairs)
    src = data_source(cfg)
    assert src["direction"] == "X -> Chinese" and "German, English -> Chinese" in src["description"]
    default = TrainConfig.from_preset("default", task="emotion", per_language=5)
    assert default.target_language == "en" and data_source(default)["direction"] == "X -> English"
    assert all(p.input.endswith(" to English:\n") for p in load_pairs(default))


@pytest.mark.parametrize("overrides, message", [
    (dict(task="emotion", languages="zh,de", target_language="zh"), "zh is the translation target, not a source"),
    (dict(task="emotion", target_language="xx"), "target language xx: task emotion has no xx items"),
    (dict(target_language="zh"), "target language zh needs a task"),
    (dict(task="emotion", languages="de", target_language="zh", control="copy"), "copy control .* needs target language en"),
    (dict(task="emotion", languages="en,de"), "English is the translation target"),
])
def test_target_language_refusals(overrides, message):
    with pytest.raises(AlignlensError, match=message):
        TrainConfig.from_preset("default", **overrides)


def test_resume_differences_name_the_target_language():
    saved = TrainConfig.from_preset("default", task="emotion", languages="de", target_language="zh")
    assert saved.resume_differences({"target_language": "en"}) == ["target_language en (saved: zh)"]
    assert saved.resume_differences({"target_language": "zh"}) == []


# ---- irrelevant label words ----------------------------------------------------------------------


def test_irrelevant_label_spec_is_the_papers_ox_horse_prompt():
    spec = data.load_task("emotion")
    irr = data.irrelevant_label_spec(spec, data.PAPER_IRRELEVANT_WORDS)
    assert irr.labels == ("ox", "horse") and irr.name == spec.name
    # the paper's zh prefix (emotion_eval_2shot_irrelative.py): English "ox"/"horse" in the zh demonstrations
    assert irr.prompts["zh"].demonstrations == ('一开始有点慢，但一旦植入式笑话开始，它就会起飞。\n情感: "ox"\n'
                                                '我带着很大的期待读了这本书，整本书都很无聊\n情感: "horse"')
    for lang in spec.languages:
        demos = irr.prompts[lang].demonstrations
        assert '"positive"' not in demos and '"negative"' not in demos
        assert demos.count('"ox"') == demos.count('"horse"') == 1
        assert irr.prompts[lang].query_template == spec.prompts[lang].query_template
        assert irr.prompts[lang].label_words == {}
    assert spec.labels == ("positive", "negative")  # the cached spec is unchanged
    items = data.load_items(spec, "de", limit=6)
    relabelled = data.relabel_items(items, data.PAPER_IRRELEVANT_WORDS)
    assert [irr.labels.index(it.label) for it in relabelled] == [spec.labels.index(it.label) for it in items]
    assert [it.index for it in relabelled] == [it.index for it in items]


def test_irrelevant_labels_score_the_words_token_sets(tiny_gemma):
    """The variant runs through the ordinary engine: label probabilities are the token-set sums of the
    irrelevant words, gold labels by position."""
    from alignlens.evaluate import evaluate_language
    from alignlens.labels import label_sets

    spec = data.load_task("emotion")
    irr = data.irrelevant_label_spec(spec, {"positive": "ox", "negative": "horse"})
    items = data.relabel_items(data.load_items(spec, "de", limit=4), data.PAPER_IRRELEVANT_WORDS)
    res = evaluate_language(tiny_gemma, irr, "de", items, batch_size=2)
    assert res.labels == ["ox", "horse"]
    assert res.gold == [spec.labels.index(it.label) for it in data.load_items(spec, "de", limit=4)]
    sets = label_sets(tiny_gemma.tokenizer, ("ox", "horse"))
    ref = torch.stack([reference_probs(tiny_gemma, data.build_prompt(irr, "de", it), sets) for it in items]).numpy()
    assert res.probs.shape == (4, 2) and np.abs(res.probs - ref).max() <= 1e-4 * ref.max()
    std = evaluate_language(tiny_gemma, spec, "de", data.load_items(spec, "de", limit=4), batch_size=2)
    assert np.abs(std.probs - res.probs).max() > 0.1 * ref.max()  # other words, other prompts


@pytest.mark.parametrize("words, message", [
    ({"positive": "ox"}, "no word for label 'negative'"),
    ({"positive": "ox", "negative": "ox"}, "the same word"),
    ({"positive": 'o"x', "negative": "horse"}, "without quotes"),
    ({"positive": "", "negative": "horse"}, "non-empty"),
])
def test_irrelevant_label_refusals(words, message):
    with pytest.raises(AlignlensError, match=message):
        data.irrelevant_label_spec(data.load_task("emotion"), words)
