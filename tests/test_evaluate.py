"""Evaluation: token sets, parity of the fast path with a plain forward pass, outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from alignlens import AlignlensError, data
from alignlens import evaluate as ev
from alignlens.engine import encode, reference_probs
from alignlens.labels import label_sets, label_token_ids, vocab_kind
from alignlens.model import load_model
from compare import PROB_ATOL


def _brute_force_sentencepiece(tokenizer, word):
    """Independent enumeration over the whole vocabulary."""
    out = set()
    for tok, i in tokenizer.get_vocab().items():
        body = tok[1:] if tok.startswith("▁") else tok
        if body and word.startswith(body) and not body.startswith("▁"):
            out.add(i)
    first = f"<0x{word.encode()[0]:02X}>"
    if ord(word[0]) >= 128 and first in tokenizer.get_vocab():  # the paper adds it for a non-ASCII first character only
        out.add(tokenizer.get_vocab()[first])
    return sorted(out)


def _brute_force_bytelevel(tokenizer, word):
    out = set()
    for tok, i in tokenizer.get_vocab().items():
        if tok.startswith("<") and tok.endswith(">"):
            continue
        text = tokenizer.convert_tokens_to_string([tok])
        if "\ufffd" in text:
            continue
        body = text[1:] if text.startswith(" ") else text
        if body and word.startswith(body):
            out.add(i)
    return sorted(out)


@pytest.mark.parametrize("word", ["entailment", "neutral", "contradiction", "positive", "different"])
def test_label_token_sets_sentencepiece(tiny_gemma, word):
    assert vocab_kind(tiny_gemma.tokenizer) == "sentencepiece"
    assert label_token_ids(tiny_gemma.tokenizer, word) == _brute_force_sentencepiece(tiny_gemma.tokenizer, word)


@pytest.mark.parametrize("word", ["entailment", "neutral", "contradiction", "same"])
def test_label_token_sets_bytelevel(tiny_llama_bytelevel, word):
    tok = tiny_llama_bytelevel.tokenizer
    assert vocab_kind(tok) == "bytelevel"
    got = label_token_ids(tok, word)
    assert got == _brute_force_bytelevel(tok, word)
    assert tok.convert_tokens_to_ids(word[0]) in got  # the single first byte is always there


def _check_parity(model, lang, n, batch_size, prefix_cache, task="snli"):
    spec = data.load_task(task)
    items = data.load_items(spec, lang, limit=n)
    res = ev.evaluate_language(model, spec, lang, items, batch_size=batch_size, prefix_cache=prefix_cache)
    sets = label_sets(model.tokenizer, spec.labels)
    ref = torch.stack([reference_probs(model, data.build_prompt(spec, lang, it), sets) for it in items]).numpy()
    assert res.probs.shape == (n, len(spec.labels))
    assert np.all(res.probs > 0)
    return np.abs(res.probs - ref).max()


@pytest.mark.parametrize("fixture", ["tiny_gemma", "tiny_llama_bytelevel", "tiny_gpt2"])
@pytest.mark.parametrize("batch_size, prefix_cache", [(1, True), (3, True), (4, False)])
def test_fast_path_equals_plain_forward_tiny(request, fixture, batch_size, prefix_cache):
    model = request.getfixturevalue(fixture)
    for lang in ("en", "zh", "hi"):
        assert _check_parity(model, lang, 5, batch_size, prefix_cache) <= 1e-4


def test_sliding_window_beyond_prompt_length(tiny_gemma):
    """Tiny Gemma has a 64-token sliding window; prompts are longer, so cached sliding layers are exercised."""
    spec = data.load_task("paws")
    item = data.load_items(spec, "de", limit=1)[0]
    assert len(encode(tiny_gemma.tokenizer, [data.build_prompt(spec, "de", item)])[0]) > 64
    assert _check_parity(tiny_gemma, "de", 3, 2, True, task="paws") <= 1e-4


def test_results_do_not_depend_on_batch_size(tiny_gemma):
    spec = data.load_task("emotion")
    items = data.load_items(spec, "ru", limit=6)
    a = ev.evaluate_language(tiny_gemma, spec, "ru", items, batch_size=1).probs
    b = ev.evaluate_language(tiny_gemma, spec, "ru", items, batch_size=6).probs
    assert np.abs(a - b).max() <= 1e-6


def test_summary_and_files(tiny_gemma, tmp_path):
    cfg = ev.EvalConfig(tasks=["snli", "emotion"], languages=["en", "de"], limit=4, batch_size=3, bootstrap_resamples=200)
    summary = ev.evaluate(tiny_gemma, cfg, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 * 2 * 4
    for t in ("snli", "emotion"):
        for lang in ("en", "de"):
            mine = [r for r in rows if r["task"] == t and r["lang"] == lang]
            assert [r["index"] for r in mine] == [0, 1, 2, 3]
            for r in mine:
                assert set(r["probs"]) == set(data.load_task(t).labels)
                assert r["pred"] == max(r["probs"], key=r["probs"].get)
            acc = np.mean([r["pred"] == r["gold"] for r in mine])
            cell = summary["tasks"][t]["languages"][lang]
            assert cell["accuracy"] == pytest.approx(acc) and cell["n"] == 4
            assert cell["ci95"][0] <= acc <= cell["ci95"][1]
            assert sum(sum(v.values()) for v in cell["confusion"].values()) == 4
        accs = [summary["tasks"][t]["languages"][lang]["accuracy"] for lang in ("en", "de")]
        assert summary["tasks"][t]["mean_accuracy"] == pytest.approx(np.mean(accs))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["options"]["limit"] == 4 and manifest["seed"] == 0
    assert len(manifest["data"]["tasks"]["snli"]["hash"]) == 64
    assert "torch" in manifest["versions"] and manifest["model"]["spec"] == "tiny-gemma3"


def test_output_folder_is_never_overwritten_silently(tiny_gemma, tmp_path):
    out = tmp_path / "out"
    cfg = ev.EvalConfig(tasks=["snli"], languages=["en"], limit=2)
    ev.evaluate(tiny_gemma, cfg, out)
    (out / "keep.txt").write_text("x")
    with pytest.raises(AlignlensError, match="not empty; pass --force"):
        ev.evaluate(tiny_gemma, cfg, out)
    assert (out / "keep.txt").exists()
    ev.evaluate(tiny_gemma, cfg, out, force=True)
    # --force replaces alignlens's own files only: a file it did not write is kept
    assert (out / "keep.txt").read_text() == "x" and (out / "summary.json").exists()


def test_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(AlignlensError, match=r"^model folder .*nope does not exist$"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlignlensError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    exe = [sys.executable, "-m", "alignlens.cli.main"]
    for args in (["eval", "--model", str(tmp_path / "nope"), "--limit", "1"], ["eval", "--languages", "en,xx"],
                 ["eval", "--tasks", "nope"], ["data", "show", "snli", "xx"]):
        proc = subprocess.run(exe + args, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, proc.stderr)
        assert "Traceback" not in proc.stderr


@pytest.mark.integration
def test_gemma_label_sets_and_bos(gemma):
    tok = gemma.tokenizer
    ids = encode(tok, ["Hallo"])[0]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert gemma.info["tokenizer_prepends_bos"] is True
    names = set(tok.convert_ids_to_tokens(label_token_ids(tok, "neutral")))
    # the paper's rule: the byte-fallback token only for a non-ASCII first character (issue 12)
    assert {"neutral", "▁neutral", "n", "▁n"} <= names and "<0x6E>" not in names
    assert all(n.lstrip("▁") and "neutral".startswith(n.lstrip("▁")) for n in names)
    assert "<0xE7>" in set(tok.convert_ids_to_tokens(label_token_ids(tok, "积极")))  # 积 = E7 A7 AF


@pytest.mark.integration
@pytest.mark.parametrize("task, lang", [("snli", "en"), ("snli", "zh"), ("emotion", "th"), ("paws", "hi")])
def test_fast_path_equals_plain_forward_gemma(gemma, task, lang):
    assert _check_parity(gemma, lang, 3, 2, True, task=task) <= 1e-4


def _long_prompt_task(folder, demonstrations: str, texts: list[str]) -> str:
    """A one-language task whose few-shot prefix is `demonstrations` and whose queries are `texts`."""
    spec = {"labels": ["entailment", "neutral", "contradiction"], "fields": ["text"],
            "languages": {"en": {"demonstrations": demonstrations, "query_template": '{text}\nAnswer: "'}}}
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps(spec), encoding="utf-8")
    labels = spec["labels"]
    rows = [json.dumps({"index": i, "label": labels[i % 3], "text": t}) for i, t in enumerate(texts)]
    (folder / "en.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(folder)


@pytest.mark.integration
def test_prompts_longer_than_gemma_sliding_window(gemma, tmp_path):
    """Gemma-3-270m's sliding-window layers see 512 tokens. With the prefix cache on, (a) a few-shot
    prefix longer than the window and (b) a prefix just under it with queries of different
    lengths that cross it (padded batch) must give the plain full forward pass's probabilities."""
    assert gemma.hf_model.config.sliding_window == 512
    snli = data.load_task("snli")
    demos = snli.prompts["en"].demonstrations
    items = data.load_items(snli, "en", limit=3)
    texts = [f"Premise: {it.fields['premise']}\nHypothesis: {it.fields['hypothesis']}" for it in items]
    cases = {
        "long-prefix": ("\n\n".join([demos] * 4), texts),
        "crossing": ("\n\n".join([demos] * 2) + "\n" + demos[:480], [texts[0], texts[1] + " " + texts[2] * 2, texts[2]]),
    }
    for name, (prefix, queries) in cases.items():
        spec = data.load_task(_long_prompt_task(tmp_path / name, prefix, queries))
        task_items = data.load_items(spec, "en")
        n_prefix = len(encode(gemma.tokenizer, [data.prompt_prefix(spec, "en")])[0])
        n_full = [len(encode(gemma.tokenizer, [data.build_prompt(spec, "en", it)])[0]) for it in task_items]
        if name == "long-prefix":
            assert n_prefix > 600
        else:
            assert n_prefix < 512 < min(n_full) and len(set(n_full)) > 1  # padded batch
        res = ev.evaluate_language(gemma, spec, "en", task_items, batch_size=3, prefix_cache=True)
        sets = label_sets(gemma.tokenizer, spec.labels)
        ref = torch.stack([reference_probs(gemma, data.build_prompt(spec, "en", it), sets) for it in task_items])
        assert np.all(res.probs > 0)
        assert np.abs(res.probs - ref.numpy()).max() <= 1e-4, name


def test_content_free_probabilities_and_calibrated_accuracy(tiny_gemma):
    """Contextual calibration (Zhao et al. 2021): the content-free probabilities equal plain full
    forwards of the content-free prompts, normalised and averaged; summary.json's calibrated accuracy
    is the argmax of probs / p_cf."""
    from alignlens import data
    from alignlens.engine import reference_probs
    from alignlens.evaluate import CONTENT_FREE, evaluate_language, summarize
    from alignlens.labels import label_sets

    spec = data.load_task("snli")
    items = data.load_items(spec, "de", limit=6)
    r = evaluate_language(tiny_gemma, spec, "de", items, batch_size=4)
    sets = label_sets(tiny_gemma.tokenizer, spec.labels)
    prompt = spec.prompts["de"]
    refs = []
    for text in CONTENT_FREE:
        query = prompt.query_template.format(**{f: text for f in spec.fields})
        p = reference_probs(tiny_gemma, data.prompt_prefix(spec, "de") + query, sets).numpy()
        refs.append(p / p.sum())
    expected = np.mean(refs, axis=0)
    expected = expected / expected.sum()
    assert np.allclose(r.p_content_free, expected, atol=1e-6)
    calibrated = (r.probs / r.probs.sum(1, keepdims=True)) / expected
    acc = float((calibrated.argmax(1) == np.asarray(r.gold)).mean())
    entry = summarize([r], bootstrap_resamples=50)["tasks"]["snli"]["languages"]["de"]
    assert entry["calibrated_accuracy"] == pytest.approx(acc)
    assert list(entry["p_content_free"]) == list(spec.labels)


def _prefix_cache(model, spec, lang, items):
    """(body, prompt token ids, shared-prefix length, the prefix's KV cache) of snli-like items."""
    from alignlens.engine import decoder_body, shared_prefix_len

    body = decoder_body(model.hf_model)
    full = encode(model.tokenizer, [data.build_prompt(spec, lang, it) for it in items])
    k = shared_prefix_len(encode(model.tokenizer, [data.prompt_prefix(spec, lang)])[0], full)
    with torch.no_grad():
        cache = body(input_ids=torch.tensor([full[0][:k]]), use_cache=True).past_key_values
    return body, full, k, cache


def test_batch_view_of_prefix_cache_equals_copies_and_leaves_it_untouched(tiny_gemma):
    """Each batch attends to the prefix's cache through broadcast views: the hidden states equal
    those after a deep copy repeated per row (the former way), and the prefix cache is unchanged
    after several batches (tiny Gemma: sliding-window and full layers)."""
    import copy

    from alignlens.engine import _batch_view, _right_padded, _suffix_forward

    spec = data.load_task("paws")
    items = data.load_items(spec, "de", limit=3)
    body, full, k, cache = _prefix_cache(tiny_gemma, spec, "de", items)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    ids, mask = _right_padded([p[k:] for p in full], 0, torch.device("cpu"))
    assert len(set(mask.sum(1).tolist())) > 1  # padded rows
    with torch.no_grad():
        fast = _suffix_forward(body, ids, mask, k, cache)
        again = _suffix_forward(body, ids[:2], mask[:2], k, cache)
        copied = copy.deepcopy(cache)
        copied.batch_repeat_interleave(len(full))
        attn = torch.cat([torch.ones(len(full), k, dtype=torch.long), mask], dim=1)
        pos = (k + torch.arange(ids.shape[1])).unsqueeze(0).expand(len(full), -1)
        slow = body(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=copied,
                    use_cache=True).last_hidden_state
    real = mask.bool()
    assert torch.allclose(fast[real], slow[real], atol=1e-6)
    assert torch.allclose(again[real[:2]], fast[:2][real[:2]], atol=1e-6)
    for layer, (keys, values) in zip(cache.layers, before):
        assert layer.keys.shape[0] == 1 and torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    view = _batch_view(cache, 4)
    assert view.layers[0].keys.shape[0] == 4 and view.layers[0].keys.data_ptr() == cache.layers[0].keys.data_ptr()


class _Recorder:
    """A probe that changes nothing and records the prefix length and each batch's query lengths."""

    def __init__(self):
        self.prefix, self.lengths = None, {}

    def prefix_hooks(self, n_tokens):
        self.prefix = n_tokens
        return []

    def hooks(self, batch):
        self.lengths.update(zip(batch.rows, batch.mask.sum(1).tolist()))
        return []

    def after_batch(self, batch):
        pass


def test_without_probes_the_cache_holds_every_shared_token(tiny_gemma):
    """Without probes the cached part is all tokens the prompts share (the few-shot prefix plus
    the template's start, 'Premise:'); a probe still sees the few-shot prefix split (its queries
    are the items' own tokens). Both give the same probabilities."""
    from alignlens.engine import score_prompts, shared_prefix_len

    spec = data.load_task("snli")
    items = data.load_items(spec, "en", limit=5)
    _, full, k, _ = _prefix_cache(tiny_gemma, spec, "en", items)
    assert shared_prefix_len(full[0], full) > k  # the template's start is shared too
    queries = [spec.prompts["en"].query_template.format(**it.fields) for it in items]
    sets = label_sets(tiny_gemma.tokenizer, spec.labels)
    prefix = data.prompt_prefix(spec, "en")
    plain = score_prompts(tiny_gemma, prefix, queries, sets, batch_size=2)
    rec = _Recorder()
    probed = score_prompts(tiny_gemma, prefix, queries, sets, batch_size=2, probes=[rec])
    assert rec.prefix == k and rec.lengths == {i: len(p) - k for i, p in enumerate(full)}
    assert torch.allclose(plain, probed, atol=1e-6, rtol=0)
    costs = []
    score_prompts(tiny_gemma, prefix, queries, sets, batch_size=2, select_batches=lambda c: costs.extend(c) or [])
    order = sorted(range(5), key=lambda i: len(full[i]))
    assert costs == [len(b) * max(len(full[i]) - shared_prefix_len(full[0], full) for i in b) for b in (order[:2], order[2:4], order[4:])]

def test_plan_batches_sorted_and_never_mixed():
    """The queries' rows and the unprobed rows, each sorted by length and cut by batch_size."""
    from alignlens.engine import plan_batches

    lengths = [5, 3, 9, 1, 7, 2, 8]  # rows 0-4 queries, 5-6 unprobed
    assert plan_batches(lengths, 5, 2) == [[3, 1], [0, 4], [2], [5, 6]]
    assert plan_batches(lengths, 5, 8) == [[3, 1, 0, 4, 2], [5, 6]]
    assert plan_batches(lengths, 7, 3) == [[3, 5, 1], [0, 4, 6], [2]]
    assert plan_batches([], 0, 2) == []


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("d_model, vocab", [(64, 1000), (640, 262144)])  # tiny models', Gemma-3-270m's head
def test_head_rows_do_not_depend_on_the_other_rows(d_model, vocab, threads):
    """Pooling the LM head over batches (`engine.HEAD_MIN_ROWS`): a row's label probabilities and
    logits do not depend on the call's other rows or their number beyond float rounding. Calls of
    other row counts may take other BLAS kernels (another path), so the check is a tolerance:
    `PROB_ATOL` on probabilities, and on logits 1e-5 relative to their scale (float32 dot
    products of length d_model <= 640, summed in another order: ~sqrt(d) * 6e-8 relative)."""
    from alignlens.engine import HEAD_MIN_ROWS, Unembed, head_probs

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        head = torch.nn.Linear(d_model, vocab, bias=False)
        torch.nn.init.normal_(head.weight, generator=gen)
        unembed = Unembed(torch.nn.Identity(), head, None)
        x = torch.randn(80, d_model, generator=gen)
        sets = [torch.tensor([1, 5]), torch.tensor([7])]
        with torch.no_grad():
            whole = head(x)
            scale = whole.abs().max()
            for lo, hi in [(0, 1), (3, 6), (10, 10 + HEAD_MIN_ROWS), (20, 53), (0, 64)]:
                part, pooled = head_probs(unembed, x[lo:hi], sets), head_probs(unembed, x, sets)[lo:hi]
                assert (part - pooled).abs().max() <= PROB_ATOL
                assert (head(x[lo:hi]) - whole[lo:hi]).abs().max() <= 1e-5 * scale
    finally:
        torch.set_num_threads(old)


def test_what_probes_see_does_not_depend_on_the_unprobed_queries(tiny_llama_bytelevel):
    """An unprobed query that tokenizes the prefix's end differently (here "Ans" + "wer" merges into
    "Answer"; on Gemma, emotion's empty content-free query merges the prefix's trailing newline) must
    not move tokens of the prefix into the queries the probes see: it gets its own prefix pass."""
    from alignlens.engine import common_prefix_len, score_prompts

    model = tiny_llama_bytelevel
    prefix = 'Premise: A man plays.\nAnswer: "yes"\n\nAns'
    queries = ["\nHypothesis: a dog runs.", " the end", "\nHypothesis: cats sleep all day."]
    unprobed = ['wer: "no"', "\n"]
    prefix_ids = encode(model.tokenizer, [prefix])[0]
    full = encode(model.tokenizer, [prefix + q for q in queries + unprobed])
    common = [common_prefix_len(prefix_ids, f) for f in full]
    assert common[:3] == [len(prefix_ids)] * 3 and common[3] < len(prefix_ids)  # the case under test
    sets = label_sets(model.tokenizer, data.load_task("snli").labels)
    alone, mixed = _Recorder(), _Recorder()
    ref = score_prompts(model, prefix, queries, sets, batch_size=2, probes=[alone])
    got = score_prompts(model, prefix, queries, sets, batch_size=2, probes=[mixed], unprobed=unprobed)
    assert mixed.prefix == alone.prefix == len(prefix_ids)
    assert mixed.lengths == alone.lengths == {i: len(full[i]) - len(prefix_ids) for i in range(3)}
    assert (got[:3] - ref).abs().max() <= PROB_ATOL  # other head calls: another path, float rounding only
    plain = torch.stack([reference_probs(model, prefix + q, sets) for q in queries + unprobed])
    assert torch.allclose(got, plain, atol=1e-5, rtol=0)


def test_unprobed_queries_share_the_call_but_not_the_probes(tiny_gemma):
    """Unprobed rows follow the queries' rows, probes see only the queries, and every row equals
    its own plain forward; grouping batches for the head (head_rows) does not change the values."""
    spec = data.load_task("snli")
    items = data.load_items(spec, "de", limit=5)
    queries = [spec.prompts["de"].query_template.format(**it.fields) for it in items]
    extra = ev.content_free_queries(spec, "de")
    sets = label_sets(tiny_gemma.tokenizer, spec.labels)
    prefix = data.prompt_prefix(spec, "de")
    from alignlens.engine import score_prompts

    rec = _Recorder()
    pooled = score_prompts(tiny_gemma, prefix, queries, sets, batch_size=2, probes=[rec], unprobed=extra)
    assert pooled.shape == (8, len(sets)) and sorted(rec.lengths) == [0, 1, 2, 3, 4]
    single = score_prompts(tiny_gemma, prefix, queries, sets, batch_size=2, head_rows=1, probes=[_Recorder()],
                           unprobed=extra)  # a probe: the same cached length as `pooled`
    assert (pooled - single).abs().max() <= PROB_ATOL  # pooling the head: another path, float rounding only
    ref = torch.stack([reference_probs(tiny_gemma, prefix + q, sets) for q in queries + extra])
    assert torch.allclose(pooled, ref, atol=1e-5, rtol=0)
