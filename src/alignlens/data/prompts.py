"""Prompts of a task (`alignlens.data`): the paper's prompt (demonstrations, a newline, the filled
query template), its shared prefix, the target-label prompts of the logit lens (each quoted English
label word in the demonstrations replaced by the language's `label_words` word) and the
irrelevant-label variant of a task (the paper's ox/horse).
"""

from __future__ import annotations

import dataclasses
import re

from alignlens import AlignlensError
from alignlens.data.tasks import Item, TaskSpec

def build_prompt(spec: TaskSpec, lang: str, item: Item) -> str:
    """The paper's prompt: demonstrations, a newline, then the filled query template."""
    p = spec.prompts[lang]
    return p.demonstrations + "\n" + p.query_template.format(**item.fields)


def prompt_prefix(spec: TaskSpec, lang: str) -> str:
    """The part of every prompt of `lang` that precedes the query (demonstrations + newline)."""
    return spec.prompts[lang].demonstrations + "\n"


def target_label_words(spec: TaskSpec, lang: str) -> dict[str, str]:
    """English label -> its word in `lang` (task.json `label_words`), for every label.

    English may leave a label out (its word is the label itself); any other language must give
    every label's word, else an AlignlensError naming the task, language, label and the way out."""
    if lang not in spec.prompts:
        raise AlignlensError(f"task {spec.name!r} has no prompt for language {lang!r} (has: {', '.join(spec.languages)})")
    words = spec.prompts[lang].label_words
    missing = [lab for lab in spec.labels if lab not in words]
    if missing and lang != "en":
        raise AlignlensError(
            f"{spec.folder / 'task.json'}: task {spec.name}, language {lang}: field 'languages.{lang}.label_words' "
            f"has no word for label {missing[0]!r} (needed for target-label lens prompts; add it, or use "
            "--lens-prompts english-labels)")
    return {lab: words.get(lab, lab) for lab in spec.labels}


def label_word_collisions(spec: TaskSpec, lang: str) -> dict[str, str]:
    """English label -> how its `lang` word (task.json `label_words`) collides with the English word,
    for the labels whose words collide: "identical" (the same word) or "same first character".

    The logit lens cannot tell such words apart and drops their items (`labels.label_overlap`):
    an identical word under either rule; a word sharing only its first character under the default
    `token-set` rule wherever the vocabulary has that character as a token (Gemma's does for every
    bundled case). A shared first character is necessary for a token-set overlap (a common token
    must be a common prefix), so every other label is safe from it. English (whose words are its
    own) and labels without a word give nothing."""
    if lang == "en" or lang not in spec.prompts:
        return {}
    out: dict[str, str] = {}
    for label, word in spec.prompts[lang].label_words.items():
        word = word.strip()
        if word == label:
            out[label] = "identical"
        elif word[:1] == label[:1]:
            out[label] = "same first character"
    return out


def _n_demonstrations(spec: TaskSpec, lang: str) -> tuple[int, str]:
    """(number of demonstrations, how it was found): the task's `shots`, else the number of times the
    query template's answer cue (its text after the last placeholder, e.g. '\\nEmotion: "') occurs."""
    if spec.shots is not None:
        return spec.shots, f"the task's shots = {spec.shots}"
    template = spec.prompts[lang].query_template
    cue = template.format(**{f: "\0" for f in spec.fields}).rsplit("\0", 1)[-1]
    n = spec.prompts[lang].demonstrations.count(cue) if cue else 0
    return n, f"{n} occurrence(s) of the answer cue {cue!r} (task.json gives no 'shots')"


def _sub_quoted_labels(spec: TaskSpec, lang: str, words: dict[str, str]) -> tuple[str, list[str], int, str]:
    """(the demonstrations of `lang` with each quoted English label `"<label>"` replaced by
    `"<words[label]>"`, the labels found quoted in order, the number of demonstrations, how it was
    counted: `_n_demonstrations`)."""
    demos = spec.prompts[lang].demonstrations
    pattern = re.compile('"(' + "|".join(re.escape(lab) for lab in sorted(spec.labels, key=len, reverse=True)) + ')"')
    n_demos, how = _n_demonstrations(spec, lang)
    return pattern.sub(lambda m: f'"{words[m.group(1)]}"', demos), pattern.findall(demos), n_demos, how


def target_label_demonstrations(spec: TaskSpec, lang: str) -> str:
    """The demonstrations of `lang` with each quoted English label word `"<label>"` replaced by the
    quoted target-language word `"<word>"` (`target_label_words`), as the paper's lens prompts
    (`prompt_prefix` in its zsm_emotion_2shot.py).

    Checked: the number of replacements equals the number of demonstrations (`shots`, else the
    answer-cue count), and afterwards no English label word is left quoted except where it is its
    own label's target word (Malay SNLI "entailment"); a target word that is another label's English
    word is refused. Each refusal is an AlignlensError naming task.json, the task, language and
    counts (use --lens-prompts english-labels for such a task)."""
    words = target_label_words(spec, lang)
    where = f"{spec.folder / 'task.json'}: task {spec.name}, language {lang}"
    out, found, n_demos, how = _sub_quoted_labels(spec, lang, words)
    if len(found) != n_demos or n_demos == 0:
        raise AlignlensError(
            f"{where}: target-label lens prompts need one quoted English label word per demonstration, but the "
            f"demonstrations quote a label {len(found)} time(s) for {n_demos} demonstration(s) ({how}); fix "
            "'demonstrations' or use --lens-prompts english-labels")
    kept = {lab: found.count(lab) if words[lab] == lab else 0 for lab in spec.labels}  # e.g. Malay "entailment"
    left = [lab for lab in spec.labels if out.count(f'"{lab}"') > kept[lab]]
    if left:
        other = [w for w, t in words.items() if t == left[0] and w != left[0]]
        why = f" (it is the target word of label {other[0]!r})" if other else ""
        raise AlignlensError(f"{where}: the English label word {left[0]!r} is still quoted in the target-label "
                             f"demonstrations{why}; fix 'label_words' or 'demonstrations', or use --lens-prompts "
                             "english-labels")
    return out


def target_label_prompt_prefix(spec: TaskSpec, lang: str) -> str:
    """`prompt_prefix` with target-language label words in the demonstrations (the paper's lens prompt)."""
    return target_label_demonstrations(spec, lang) + "\n"


def target_label_spec(spec: TaskSpec, lang: str) -> TaskSpec:
    """A copy of `spec` whose `lang` demonstrations carry the target-language label words (the other
    languages, labels and items unchanged): run it through the evaluation engine to get the
    paper's lens prompts, `target_label_prompt_prefix + query`."""
    prompt = dataclasses.replace(spec.prompts[lang], demonstrations=target_label_demonstrations(spec, lang))
    return dataclasses.replace(spec, prompts={**spec.prompts, lang: prompt})


#: The paper's irrelevant label words (emotion_eval_2shot_irrelative.py): English "ox" for positive and
#: "horse" for negative, in every language's demonstrations, scored over their English token sets.
PAPER_IRRELEVANT_WORDS: dict[str, str] = {"positive": "ox", "negative": "horse"}


def irrelevant_label_spec(spec: TaskSpec, words: dict[str, str]) -> TaskSpec:
    """A copy of `spec` whose labels are irrelevant words (`words`: English label -> word, one for
    every label; the new labels keep the task's label order) and whose demonstrations, in every
    language, quote those words instead of the English labels (the paper's irrelevant-label
    evaluation: "ox" for positive, "horse" for negative). Scoring then sums the token sets of the
    words. Gold labels map by position: load items with `spec` and relabel them with
    `relabel_items(items, words)`. Label words of the target languages are dropped (they name the
    old labels). Refused (AlignlensError naming task and language): a label without a word, an empty
    word, a word with a quote or a line break, one word for two labels, or demonstrations that do
    not quote one English label per demonstration."""
    missing = [lab for lab in spec.labels if lab not in words]
    if missing:
        raise AlignlensError(f"task {spec.name}: irrelevant label words give no word for label {missing[0]!r} "
                             f"(labels: {', '.join(spec.labels)})")
    for lab in spec.labels:
        w = words[lab]
        if not isinstance(w, str) or not w.strip() or any(c in w for c in '"\n\r'):
            raise AlignlensError(f"task {spec.name}: irrelevant label word {w!r} for label {lab!r} must be a non-empty "
                                 "word without quotes or line breaks")
    new_labels = tuple(words[lab].strip() for lab in spec.labels)
    if len(set(new_labels)) != len(new_labels):
        raise AlignlensError(f"task {spec.name}: irrelevant label words {list(new_labels)} give two labels the same word")
    prompts = {}
    for lang, prompt in spec.prompts.items():
        out, found, n_demos, how = _sub_quoted_labels(spec, lang, {lab: words[lab].strip() for lab in spec.labels})
        if len(found) != n_demos or n_demos == 0:
            raise AlignlensError(
                f"{spec.folder / 'task.json'}: task {spec.name}, language {lang}: irrelevant label words need one quoted "
                f"English label word per demonstration, but the demonstrations quote a label {len(found)} time(s) for "
                f"{n_demos} demonstration(s) ({how})")
        prompts[lang] = dataclasses.replace(prompt, demonstrations=out, label_words={})
    return dataclasses.replace(spec, labels=new_labels, prompts=prompts)


def relabel_items(items: list[Item], words: dict[str, str]) -> list[Item]:
    """`items` with each gold label replaced by its word in `words` (English label -> word): the
    gold labels of `irrelevant_label_spec`'s task, by position."""
    return [dataclasses.replace(it, label=words[it.label].strip()) for it in items]
