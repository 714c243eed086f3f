"""bench/analyze_vs_paper.py: its paper pipeline (batch 1, all hidden states, separate evaluation pass)
agrees with alignlens's capture on a tiny random model, and its comparison catches a difference."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import analyze_vs_paper as avp  # noqa: E402

from alignlens import data  # noqa: E402
from alignlens.config import AnalyzeConfig  # noqa: E402
from alignlens.pipeline import capture_run  # noqa: E402

LANGS = ["en", "de", "zh"]


@pytest.fixture(scope="module")
def both(tiny_gemma):
    """alignlens's capture (batches of 3 with padding, cached prefix, target-label capture pass for
    de and zh, English captured in the evaluation pass) and the paper pipeline on the same items."""
    spec = avp.resolve_task("sentiment")
    cfg = AnalyzeConfig(tasks=[spec.name], languages=LANGS, limit=4, batch_size=3)
    results, caps = capture_run(tiny_gemma, cfg)
    items = {lang: cfg.select_items(data.load_items(spec, lang), spec.labels) for lang in LANGS}
    paper = {lang: avp.paper_pipeline(tiny_gemma, spec, lang, items[lang]) for lang in LANGS}
    return results, caps, paper


def test_paper_pipeline_agrees_with_alignlens(both):
    results, caps, paper = both
    diff = avp.compare(results, caps, paper)
    assert avp.failures(diff) == [], diff
    assert diff["items"] == 0
    # the tiny model's label probabilities are ~1e-4, as small as the bench's absolute tolerance: they
    # must agree relatively too (float32: ~1e-5 of the largest value)
    for key, field in (("probs", "probs"), ("lens_probs", "p_target")):
        largest = max(float(getattr(p, field).max()) for p in paper.values())
        assert diff[key] <= 1e-4 * largest, (key, diff[key], largest)
    p = paper["de"]
    assert p.p_en.shape[1:] == (2, 2) and np.ptp(p.p_en) > 1e-5 and np.ptp(p.entropy) > 1.0  # not constant
    # HF's last hidden state is after the final norm: the paper side must (and does) use the
    # pre-norm block output for its last row, or the prompt means would not have matched
    assert diff["normed_last_row"] > 100 * avp.STATE_REL_TOL


@pytest.mark.parametrize("field,delta", [("probs", 2e-4), ("p_target", 2e-4), ("entropy", 2e-3),
                                         ("prompt_mean", None)])
def test_comparison_catches_a_difference(both, field, delta):
    results, caps, paper = both
    p = paper["zh"]
    changed = getattr(p, field).copy()
    if delta is None:  # a relative change of 1e-3 in one item's row-2 state
        changed[1, 2] *= 1.001
    else:
        changed.flat[5] += delta
    bad = avp.failures(avp.compare(results, caps, {**paper, "zh": dataclasses.replace(p, **{field: changed})}))
    assert len(bad) == 1, bad


def test_counted_flops_paper_runs_more(tiny_gemma):
    """The paper runs every token of both prompts through body and head; alignlens the shared prefix
    once per pass, the rest through the body and only the last position (and the lens) through the head."""
    spec = avp.resolve_task("sentiment")
    items = {lang: data.load_items(spec, lang, 3) for lang in LANGS}
    paper, fast = avp.counted_flops(tiny_gemma, spec, items)
    assert paper > fast > 0
    # English (evaluation prompt = lens prompt): the paper runs it twice, alignlens once, with the lens
    from alignlens.engine import encode, shared_prefix_len
    from flops import body_flops_per_token, head_flops_per_position

    fb, fh, L = body_flops_per_token(tiny_gemma.hf_model), head_flops_per_position(tiny_gemma.hf_model), tiny_gemma.n_layers
    from alignlens.evaluate import content_free_queries

    prefix = data.prompt_prefix(spec, "en")
    full = encode(tiny_gemma.tokenizer, [data.build_prompt(spec, "en", it) for it in items["en"]])
    extra = encode(tiny_gemma.tokenizer, [prefix + q for q in content_free_queries(spec, "en")])
    k = shared_prefix_len(encode(tiny_gemma.tokenizer, [prefix])[0], full + extra)
    assert 0 < k < min(map(len, full)) and len(extra) == 3
    p_en, f_en = avp.counted_flops(tiny_gemma, spec, {"en": items["en"]})
    assert p_en == pytest.approx(2 * sum(map(len, full)) * (fb + fh) + 3 * L * fh)
    assert f_en == pytest.approx(k * fb + sum((len(t) - k) * fb for t in full + extra) + 3 * (1 + L) * fh + 3 * fh)
