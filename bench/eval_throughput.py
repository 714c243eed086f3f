"""Evaluation throughput: alignlens's fast path vs the paper's method, on the same items.

The paper's method: one item at a time, full-sequence logits, no cache. alignlens: the few-shot
prefix's KV cache reused, padded batches, LM head on the last position only. Checks that the
predictions are identical and the probabilities agree, then prints items/s of both and the ratio
(target: >= 5 on a 2-core CPU).

    python bench/eval_throughput.py [--items 100] [--languages en,zh,de] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from alignlens import data
from alignlens import evaluate as ev
from alignlens.engine import reference_probs
from alignlens.labels import label_sets
from alignlens.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--task", default="snli")
    ap.add_argument("--items", type=int, default=100, help="items per language")
    ap.add_argument("--languages", default="en,zh,de")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    model = load_model(args.model)
    spec = data.load_task(args.task)
    sets = label_sets(model.tokenizer, spec.labels)
    langs = args.languages.split(",")
    fast, ref, n = {}, {}, 0
    t0 = time.perf_counter()
    for lang in langs:
        items = data.load_items(spec, lang, args.items)
        fast[lang] = ev.evaluate_language(model, spec, lang, items, batch_size=args.batch_size).probs
        n += len(items)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    for lang in langs:
        items = data.load_items(spec, lang, args.items)
        ref[lang] = torch.stack([reference_probs(model, data.build_prompt(spec, lang, it), sets) for it in items]).numpy()
    t_ref = time.perf_counter() - t0
    same = all((fast[lang].argmax(1) == ref[lang].argmax(1)).all() for lang in langs)
    max_diff = max(float(np.abs(fast[lang] - ref[lang]).max()) for lang in langs)
    print(f"model {args.model}, task {args.task}, {n} items ({args.items} x {len(langs)} languages), "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"paper's method (one item, full logits, no cache): {n / t_ref:7.2f} items/s ({t_ref:.0f}s)")
    print(f"alignlens (prefix KV cache, batched, last position): {n / t_fast:7.2f} items/s ({t_fast:.0f}s)")
    print(f"predictions identical: {same}; max |prob difference|: {max_diff:.2e}")
    print(f"ratio: {t_ref / t_fast:.2f}x (target >= 5)")
    if not same:
        raise SystemExit("predictions differ")


if __name__ == "__main__":
    main()
