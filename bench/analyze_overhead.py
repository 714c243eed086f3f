"""Capture + analyses overhead and memory growth of `alignlens analyze`.

1. Wall time of capture (all hooks, logit lens, reducers) + all analyses over N items per
   language vs a bare forward pass over the same batches (the same scoring engine, no hooks);
   target <= 1.3x. By default the capture runs on the evaluation prompts (`--lens-prompts
   english-labels`: one pass, like for like); analyze's default `target-labels` adds a second
   forward pass over every non-English item by design (the paper's lens prompts), so it roughly
   doubles the forward work. The capture and the analyses are timed separately too.
2. Peak memory (max RSS of a fresh process) for N and 10N items per language; target: < 10% growth.

    python bench/analyze_overhead.py [--items 16] [--languages en,zh,de]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from alignlens import data
from alignlens.config import AnalyzeConfig
from alignlens.pipeline import capture_run, run_analyses
from alignlens.evaluate import evaluate_language
from alignlens.model import load_model


def timed(args) -> None:
    model = load_model(args.model)
    langs = args.languages.split(",")
    cfg = AnalyzeConfig(tasks=[args.task], languages=langs, limit=args.items, batch_size=args.batch_size,
                        lens_prompts=args.lens_prompts)
    spec = data.load_task(args.task)
    items = {lang: data.load_items(spec, lang, args.items) for lang in langs}
    evaluate_language(model, spec, langs[0], items[langs[0]][:2], batch_size=2)  # warm-up
    bare, full, cap_t = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for lang in langs:
            evaluate_language(model, spec, lang, items[lang], batch_size=args.batch_size)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        results, caps = capture_run(model, cfg)
        cap_t.append(time.perf_counter() - t0)
        run_analyses(results, caps, cfg)
        full.append(time.perf_counter() - t0)
    n = args.items * len(langs)
    print(f"{n} items ({args.items} x {len(langs)} languages), task {args.task}, batch {args.batch_size}, "
          f"--lens-prompts {args.lens_prompts}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"bare forward (scoring only):      {min(bare):7.1f}s")
    print(f"capture (hooks, lens, reducers):  {min(cap_t):7.1f}s  ({min(cap_t) / min(bare):.2f}x)")
    print(f"capture + all analyses:           {min(full):7.1f}s")
    print(f"ratio: {min(full) / min(bare):.2f}x (target <= 1.3)")


def peak(args) -> None:
    """Child process: run capture + analyses, print peak RSS in MiB."""
    model = load_model(args.model)
    cfg = AnalyzeConfig(tasks=[args.task], languages=args.languages.split(","), limit=args.items, batch_size=args.batch_size)
    results, caps = capture_run(model, cfg)
    run_analyses(results, caps, cfg)
    print(json.dumps({"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--task", default="snli")
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--languages", default="en,zh,de")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lens-prompts", default="english-labels", choices=["english-labels", "target-labels"])
    ap.add_argument("--peak-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    if args.peak_only:
        return peak(args)
    timed(args)
    if args.skip_memory:
        return
    rss = {}
    for n in (args.items, 10 * args.items):
        cmd = [sys.executable, __file__, "--peak-only", "--items", str(n), "--languages", args.languages,
               "--model", args.model, "--task", args.task, "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rss[n] = json.loads(out)["max_rss_mib"]
        print(f"peak RSS with {n} items per language: {rss[n]:.0f} MiB")
    growth = rss[10 * args.items] / rss[args.items] - 1
    print(f"memory growth N -> 10N: {growth:+.1%} (target < 10%)")


if __name__ == "__main__":
    main()
