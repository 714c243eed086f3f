"""Evaluation throughput: alignlens's fast path vs the paper's method, on the same items.

The paper's method: one item at a time, full-sequence logits, no cache. alignlens
(`evaluate.evaluate_language`): the shared prefix's KV cache reused (broadcast, not copied),
padded batches, the LM head on the last positions of several batches at once, plus the 3
content-free calibration queries per language in the same call. Checks that the
predictions are identical and the probabilities agree (1e-4), then times the two methods
alternately for `--rounds` rounds (load from other processes affects both alike) and prints the
median items/s of each and the median ratio (target: >= 14; the FLOP ratio is the moonshot), with
each method's counted FLOPs per item and achieved GFLOP/s against the machine's measured GEMM peak
(bench/flops.py).

    python bench/eval_throughput.py [--items 34] [--languages en,zh,de] [--batch-size 8] [--rounds 3] [--threads N]

`--threads` sets torch's thread count for both methods (default: torch's, one per core). On a
machine whose cores other processes also use, 1 thread is much faster for both (and more so for
the fast path, whose operations are smaller): an OpenMP parallel region waits for its slowest
thread, and a thread that loses its core stalls every small operation by a scheduler time slice.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import comparison_parser, parse_and_set_threads  # noqa: E402
from flops import body_flops_per_token, describe, gemm_peak_gflops, head_flops_per_position, scoring_flops  # noqa: E402

from alignlens import data  # noqa: E402
from alignlens import evaluate as ev  # noqa: E402
from alignlens.engine import encode, reference_probs  # noqa: E402
from alignlens.labels import label_sets  # noqa: E402
from alignlens.model import load_model  # noqa: E402


def counted_flops(model, spec, langs: list[str], items: dict) -> tuple[float, float]:
    """(paper's method, alignlens) useful FLOPs over all items: the paper runs every prompt token
    through the body and the head; alignlens runs each language's shared prefix once through the
    body (the tokens all its prompts share, `engine.shared_prefix_len`), then each item's and each
    content-free query's suffix through the body and its last position through the head (the
    content-free queries of contextual calibration, 3 per language, are scored in the same call;
    the paper's method has no calibration, so they are extra work on alignlens's side)."""
    fb, fh = body_flops_per_token(model.hf_model), head_flops_per_position(model.hf_model)
    paper = fast = 0.0
    for lang in langs:
        prompts = encode(model.tokenizer, [data.build_prompt(spec, lang, it) for it in items[lang]])
        paper += sum(len(p) for p in prompts) * (fb + fh)
        fast += scoring_flops(model, spec, lang, items[lang], probed=False, calibrate=True)
    return paper, fast


def main() -> None:
    args = parse_and_set_threads(comparison_parser(__doc__.splitlines()[0], task="snli", items=34))
    model = load_model(args.model)
    spec = data.load_task(args.task)
    sets = label_sets(model.tokenizer, spec.labels)
    langs = args.languages.split(",")
    items = {lang: data.load_items(spec, lang, args.items) for lang in langs}
    n = sum(len(v) for v in items.values())

    def run_fast():
        return {lang: ev.evaluate_language(model, spec, lang, items[lang], batch_size=args.batch_size).probs
                for lang in langs}

    def run_paper():
        return {lang: torch.stack([reference_probs(model, data.build_prompt(spec, lang, it), sets)
                                   for it in items[lang]]).numpy() for lang in langs}

    t_fast, t_ref, c_fast, c_ref = [], [], [], []  # wall-clock and process CPU seconds
    for _ in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        fast = run_fast()
        t_fast.append(time.perf_counter() - t0)
        c_fast.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        ref = run_paper()
        t_ref.append(time.perf_counter() - t0)
        c_ref.append(time.process_time() - c0)
    same = all((fast[lang].argmax(1) == ref[lang].argmax(1)).all() for lang in langs)
    max_diff = max(float(np.abs(fast[lang] - ref[lang]).max()) for lang in langs)
    peak = gemm_peak_gflops()
    f_paper, f_fast = counted_flops(model, spec, langs, items)
    tf, tr = statistics.median(t_fast), statistics.median(t_ref)
    print(f"model {args.model}, task {args.task}, {n} items ({args.items} x {len(langs)} languages), "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.rounds} alternating rounds (medians)")
    print(f"paper's method (one item, full logits, no cache): {n / tr:7.2f} items/s ({tr:.1f}s)")
    print(f"alignlens (prefix KV cache, batched, last position): {n / tf:7.2f} items/s ({tf:.1f}s)")
    print(describe("  paper's method", f_paper, tr, peak, n))
    print(describe("  alignlens     ", f_fast, tf, peak, n))
    print(f"predictions identical: {same}; max |prob difference|: {max_diff:.2e}")
    ratios = [r / f for r, f in zip(t_ref, t_fast)]
    print(f"ratio: {statistics.median(ratios):.2f}x median of rounds {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(target >= 14; FLOP ratio {f_paper / f_fast:.1f}x)")
    cpu = [r / f for r, f in zip(c_ref, c_fast)]
    print(f"CPU-time ratio: {statistics.median(cpu):.2f}x median of rounds {', '.join(f'{r:.2f}' for r in cpu)} "
          "(process CPU seconds: less affected by other processes' load)")
    if not same or max_diff > 1e-4:
        raise SystemExit("predictions differ or probabilities disagree by more than 1e-4")


if __name__ == "__main__":
    main()
