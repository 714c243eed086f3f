"""The paper's logit-lens inputs: target-label prompts (data.target_label_*) and label token sets
(labels.label_token_ids), checked against the paper's own text and rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlens import AlignlensError, data
from alignlens.config import AnalyzeConfig
from alignlens.labels import byte_fallback_token, label_token_ids

# `prompt_prefix` of the paper's zsm_emotion_2shot.py (Shimao-Zhang/LLM-Multilingual-Learner), copied verbatim.
PAPER_PREFIX = {
    "zh": '''一开始有点慢，但一旦植入式笑话开始，它就会起飞。
情感: "积极"
我带着很大的期待读了这本书，整本书都很无聊
情感: "消极"''',
    "ja": '''始まりは少し遅いですが、プロダクト プレイスメントのジョークが始まると一気に盛り上がります。
感情: "ポジティブ"
とても期待してこの本を読んだのですが、全編通してとても退屈でした
感情: "ネガティブ"''',
    "hi": '''इसकी शुरुआत थोड़ी धीमी होती है, लेकिन एक बार जब उत्पाद प्लेसमेंट के बारे में मजाक शुरू हो जाता है तो इसमें तेजी आ जाती है।
भावना: "सकारात्मक"
मैंने यह किताब बहुत उम्मीद के साथ पढ़ी है, पूरी किताब में यह बहुत उबाऊ थी
भावना: "नकारात्मक"''',
}
# the paper's query suffix per language: prompt = prompt_prefix[lang] + '\n' + input + suffix
PAPER_SUFFIX = {"zh": '\n情感: "', "ja": '\n感情: "', "hi": '\nभावना: "'}


def test_target_label_prompt_equals_paper_for_zh_sentiment():
    spec = data.load_task("emotion")
    assert data.target_label_prompt_prefix(spec, "zh") == PAPER_PREFIX["zh"] + "\n"
    # the whole lens prompt of an item, as the paper builds it
    item = data.load_items(spec, "zh", limit=1)[0]
    target = data.target_label_spec(spec, "zh")
    assert data.build_prompt(target, "zh", item) == PAPER_PREFIX["zh"] + "\n" + item.fields["input"] + PAPER_SUFFIX["zh"]
    # the evaluation prompt keeps the English labels (constrained decoding on English words)
    assert '"positive"' in data.build_prompt(spec, "zh", item) and '"积极"' not in data.build_prompt(spec, "zh", item)


@pytest.mark.parametrize("lang", ["ja", "hi"])
def test_target_label_prompt_equals_paper_ja_hi(lang):
    spec = data.load_task("emotion")
    assert data.target_label_demonstrations(spec, lang) == PAPER_PREFIX[lang]


def test_every_bundled_language_builds_with_one_word_per_demonstration():
    for task in data.BUNDLED_TASKS:
        spec = data.load_task(task)
        for lang in spec.languages:
            demos = spec.prompts[lang].demonstrations
            out = data.target_label_demonstrations(spec, lang)
            words = data.target_label_words(spec, lang)
            # count each label's demonstrations in the English-label text and its word in the new one
            for lab in spec.labels:
                n = demos.count(f'"{lab}"')
                assert n == spec.shots // len(spec.labels), (task, lang, lab)
                others = sum(demos.count(f'"{o}"') for o in spec.labels if words[o] == words[lab] and o != lab)
                assert out.count(f'"{words[lab]}"') == n + others, (task, lang, lab)
            # only the quoted label words change: removing them leaves the same text
            strip = lambda text, ws: [part for i, part in enumerate(text.split('"')) if i % 2 == 0 or part not in ws]
            assert strip(out, set(words.values())) == strip(demos, set(spec.labels)), (task, lang)
            if lang == "en" or task == "paws":
                assert out == demos  # English words are their own target words; PAWS keeps "same"/"different"


def _custom_task(tmp_path: Path, demonstrations: str, words: dict | None, shots: int | None = 2) -> data.TaskSpec:
    folder = tmp_path / "mytask"
    folder.mkdir(exist_ok=True)
    lang = {"demonstrations": demonstrations, "query_template": '{text}\nLabel: "'}
    if words is not None:
        lang["label_words"] = words
    spec = {"name": "mytask", "labels": ["yes", "no"], "fields": ["text"], "languages": {"xx": lang}}
    if shots is not None:
        spec["shots"] = shots
    (folder / "task.json").write_text(json.dumps(spec), encoding="utf-8")
    (folder / "xx.jsonl").write_text('{"text": "a", "label": "yes"}\n', encoding="utf-8")
    return data.load_task(str(folder))


def test_custom_task_builds_and_counts_demonstrations_from_the_answer_cue(tmp_path):
    spec = _custom_task(tmp_path, 'A\nLabel: "yes"\nB\nLabel: "no"', {"yes": "ja", "no": "nein"}, shots=None)
    assert data.target_label_demonstrations(spec, "xx") == 'A\nLabel: "ja"\nB\nLabel: "nein"'


@pytest.mark.parametrize("demos, words, shots, message", [
    # a label word quoted inside a demonstration's text: 3 replacements for 2 demonstrations
    ('He said "yes" twice\nLabel: "yes"\nB\nLabel: "no"', {"yes": "ja", "no": "nein"}, 2,
     r"quote a label 3 time\(s\) for 2 demonstration\(s\) \(the task's shots = 2\)"),
    # unquoted labels: nothing to replace
    ("A\nLabel: yes\nB\nLabel: no", {"yes": "ja", "no": "nein"}, 2, r"quote a label 0 time\(s\) for 2"),
    # a target word that is another label's English word would show a wrong label in the demonstrations
    ('A\nLabel: "yes"\nB\nLabel: "no"', {"yes": "no", "no": "nein"}, 2,
     r"English label word 'no' is still quoted .* target word of label 'yes'"),
    # no target word for a label
    ('A\nLabel: "yes"\nB\nLabel: "no"', {"yes": "ja"}, 2, r"label_words' has no word for label 'no'"),
])
def test_target_label_prompts_refuse_what_they_cannot_build(tmp_path, demos, words, shots, message):
    spec = _custom_task(tmp_path, demos, words, shots)
    with pytest.raises(AlignlensError, match=message) as e:
        data.target_label_demonstrations(spec, "xx")
    text = str(e.value)
    assert "\n" not in text and "task mytask, language xx" in text and "task.json" in text
    assert "--lens-prompts english-labels" in text


def test_analyze_refuses_before_loading_a_model(tmp_path):
    """pipeline.analyze builds every target-label prompt before any model loads (`plan.resolve_plan`)."""
    from alignlens.pipeline import analyze
    from alignlens.plan import resolve_plan

    spec = _custom_task(tmp_path, "A\nLabel: yes\nB\nLabel: no", {"yes": "ja", "no": "nein"})
    cfg = AnalyzeConfig(tasks=[str(spec.folder)], languages=["xx"], limit=1)
    with pytest.raises(AlignlensError, match="quote a label 0 time"):
        resolve_plan(cfg)
    from fixtures import save_tiny_base

    model = save_tiny_base(tmp_path / "tiny", vocab_size=300)
    with pytest.raises(AlignlensError, match="quote a label 0 time"):
        analyze(cfg, str(model), out=tmp_path / "out", report=False)
    assert not (tmp_path / "out").exists()
    resolve_plan(AnalyzeConfig(tasks=[str(spec.folder)], languages=["xx"], lens_prompts="english-labels"))


def test_lens_prompts_option_is_checked():
    assert AnalyzeConfig().lens_prompts == "target-labels"
    assert AnalyzeConfig().to_dict()["lens_prompts"] == "target-labels"  # recorded in manifest options
    with pytest.raises(AlignlensError, match="unknown lens prompts 'target'"):
        AnalyzeConfig(lens_prompts="target")


# ---- token sets: the paper's process_tokens / unicode_prefix_tokid -----------------------------


def _paper_has_byte_token(word: str) -> bool:
    """The paper's test in `unicode_prefix_tokid(zh_char)`, verbatim."""
    return word[0].encode().__str__()[2:-1].startswith("\\x")


def _brute_force_sentencepiece(tokenizer, word):
    """Independent enumeration over the vocabulary: every token that is a non-empty prefix of the word,
    with or without '▁', plus the first byte's <0xNN> exactly where the paper's test says so."""
    vocab = tokenizer.get_vocab()
    out = set()
    for tok, i in vocab.items():
        body = tok[1:] if tok.startswith("▁") else tok
        if body and word.startswith(body) and not body.startswith("▁"):
            out.add(i)
    if _paper_has_byte_token(word):
        first = "<0x%s>" % word.encode().__str__()[2:-1].split("\\x")[1].upper()  # the paper's own construction
        if first in vocab:
            out.add(vocab[first])
    return sorted(out)


def test_byte_fallback_token_matches_the_paper_for_every_character():
    chars = [chr(c) for c in range(0, 0x3100)] + ["😀", "积", "ऀ", "ñ"]
    for ch in chars:
        if 0xD800 <= ord(ch) <= 0xDFFF:
            continue  # surrogates cannot be encoded
        tok = byte_fallback_token(ch + "x")
        assert (tok is not None) == _paper_has_byte_token(ch), repr(ch)
        if tok is not None:
            assert tok == "<0x%s>" % ch.encode().__str__()[2:-1].split("\\x")[1].upper()
    assert byte_fallback_token("positive") is None and byte_fallback_token("积极") == "<0xE7>"


@pytest.mark.parametrize("word", ["positive", "entailment", "jákvæð", "积极", "सकारात्मक", "позитивный", "ポジティブ"])
def test_label_token_sets_follow_the_paper(tiny_gemma, word):
    tok = tiny_gemma.tokenizer
    vocab = tok.get_vocab()
    got = label_token_ids(tok, word)
    assert got == _brute_force_sentencepiece(tok, word)
    first_byte = vocab[f"<0x{word.encode()[0]:02X}>"]  # the tiny vocabulary has all 256 byte tokens
    if ord(word[0]) < 128:
        assert first_byte not in got  # ASCII first character: no byte token (even with non-ASCII later: jákvæð)
    else:
        assert first_byte in got
