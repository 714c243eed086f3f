"""Cross-model activation patching: `alignlens.localize.patch_language` vs the naive loop, on the same items.

The naive loop (`localize.reference_patch`): per item and direction, one plain full forward of the
source keeping every site's activation, then one plain full forward of the receiver per (site,
positions) with a hook setting the site to the source's values (no prefix cache, no layer
skipping; logits of the last position only, so the LM head is not what it loses on).
alignlens: the few-shot prefix's key/value cache per language and model, each model's clean run
once per item batch, every patched run entering the receiver at the site's block (blocks below not
computed), `all` positions' patched prefix once per (language, site, direction), and `last` runs as
one-token runs after the receiver's clean cache (`one_token_last`; timed with and without).

Checked (exit 1 otherwise): every patched label probability agrees with the naive loop's within
1e-5 (absolute), in both alignlens variants. Printed: seconds of each method (`--rounds` alternating
rounds of the three, each round's times on stderr, medians), the measured ratio naive / alignlens
(median over rounds), and the FLOP ratio, counted in bench/flops.py's style (a token through blocks
l..n-1 costs (n-l)/n x 2 x non-embedding parameters; a position through the LM head 2 x d_model x
vocabulary; alignlens's padding tokens and the head's minimum of 16 rows count as work; attention
scores ignored).

Without --compare, the "aligned" model is --model changed by a merged random LoRA on q_proj and
v_proj (r 8, B ~ N(0, 0.02²): a stand-in whose probabilities differ from the base's by ~1e-2).

    python bench/localize_vs_naive.py [--task emotion] [--languages zh,de] [--items 4] [--layers 0,9,18]
                                      [--rounds 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from flops import body_flops_per_token, head_flops_per_position  # noqa: E402

from alignlens import data  # noqa: E402
from alignlens.labels import label_sets  # noqa: E402
from alignlens.localize import directions_by_name, make_sites, patch_language, reference_patch  # noqa: E402
from alignlens.localize import patching  # noqa: E402
from alignlens.localize.patching import prompt_tokens  # noqa: E402
from alignlens.model import LoadedModel, load_hf, load_model, wrap_bridge  # noqa: E402


def aligned_stand_in(base: LoadedModel) -> LoadedModel:
    from fixtures import lora_merged

    hf, _, _ = load_hf(base.spec, base.device, base.dtype, tokenizer=base.tokenizer)
    hf = lora_merged(hf, r=8, scale=0.02)
    return LoadedModel(wrap_bridge("lora-stand-in", hf, base.tokenizer, base.device, base.dtype), base.tokenizer,
                       "lora-stand-in", "lora-stand-in", None, base.device, base.dtype)


class WorkCounter:
    """Counts alignlens's work by wrapping `patching.decoder_pass` and `patching.head_probs`."""

    def __init__(self, n_layers: int, fb: float, fh: float) -> None:
        self.n, self.fb, self.fh, self.flops = n_layers, fb, fh, 0.0
        self._pass, self._head = patching.decoder_pass, patching.head_probs

    def __enter__(self) -> "WorkCounter":
        def counted_pass(model, **kw):
            x = kw["ids"] if kw.get("ids") is not None else kw["residual"]
            self.flops += x.shape[0] * x.shape[1] * (self.n - kw.get("layer", 0)) / self.n * self.fb
            return self._pass(model, **kw)

        def counted_head(unembed, states, index_sets):
            self.flops += max(states.shape[0], 16) * self.fh
            return self._head(unembed, states, index_sets)

        patching.decoder_pass, patching.head_probs = counted_pass, counted_head
        return self

    def __exit__(self, *exc) -> None:
        patching.decoder_pass, patching.head_probs = self._pass, self._head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--compare", default=None, help="the aligned model (default: a LoRA stand-in, see above)")
    ap.add_argument("--task", default="emotion")
    ap.add_argument("--languages", default="zh,de")
    ap.add_argument("--items", type=int, default=4, help="items per language (the first ones)")
    ap.add_argument("--layers", default="0,9,18", help="site layers (resid at each; attn/mlp below n_layers)")
    ap.add_argument("--sites", default="resid,attn,mlp")
    ap.add_argument("--positions", default="last,query,all")
    ap.add_argument("--directions", default="a2b,b2a")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating timed rounds of the three (medians reported)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_model(args.model, device="cpu", dtype="float32")
    aligned = load_model(args.compare, device="cpu", dtype="float32") if args.compare else aligned_stand_in(base)
    models = {"base": base, "aligned": aligned}
    spec = data.load_task(args.task)
    langs = args.languages.split(",")
    sites = make_sites(args.sites.split(","), base.n_layers, [int(x) for x in args.layers.split(",")])
    positions = args.positions.split(",")
    directions = directions_by_name(args.directions.split(","))
    items = {lang: data.load_items(spec, lang, limit=args.items) for lang in langs}
    fb, fh = body_flops_per_token(base.hf_model), head_flops_per_position(base.hf_model)
    runs = [((s,), p) for s in sites for p in positions]
    n_runs = sum(len(items[lang]) for lang in langs) * len(directions) * len(runs)
    print(f"{args.task}, languages {', '.join(langs)}, {args.items} items each, {len(sites)} sites x "
          f"{len(positions)} positions x {len(directions)} directions = {n_runs} patched runs; "
          f"threads {torch.get_num_threads()}", flush=True)

    # warm-up (not timed): the models' one-time entry self-check, first-call allocations
    patch_language(models, spec, langs[0], items[langs[0]][:1], sites=sites[:1], positions=positions[:1],
                   directions=directions[:1])
    ours: dict[bool, dict] = {True: {"seconds": []}, False: {"seconds": []}}
    naive_seconds: list[float] = []
    naive_rows: dict = {}
    naive_flops = 0.0
    for round_ in range(args.rounds):
        for one_token in ((True, False) if round_ % 2 == 0 else (False, True)):  # alternate which goes first
            rows, t0 = [], time.perf_counter()
            with WorkCounter(base.n_layers, fb, fh) as count:
                for lang in langs:
                    rows += patch_language(models, spec, lang, items[lang], sites=sites, positions=positions,
                                           directions=directions, batch_size=args.batch_size, one_token_last=one_token)
            ours[one_token]["seconds"].append(time.perf_counter() - t0)
            ours[one_token]["flops"] = count.flops
            ours[one_token]["rows"] = {(r["lang"], r["index"], r["direction"], r["site"], r["layer"], r["positions"]): r
                                       for r in rows if r["site"] != "clean"}
            print(f"round {round_ + 1}: alignlens (one_token_last={one_token}): {ours[one_token]['seconds'][-1]:.1f} s, "
                  f"{count.flops / 1e9:.0f} GFLOP", file=sys.stderr, flush=True)
        naive_flops, t0 = 0.0, time.perf_counter()
        for lang in langs:
            full, k = prompt_tokens(base.tokenizer, spec, lang, items[lang])
            sets = label_sets(base.tokenizer, spec.labels)
            for i, it in enumerate(items[lang]):
                for d in directions:
                    probs = reference_patch(models[d.source], models[d.receiver], full[i], k, runs, sets)
                    naive_flops += (1 + len(runs)) * (len(full[i]) * fb + fh)
                    for ((s,), p), pr in zip(runs, probs):
                        naive_rows[(lang, it.index, d.name, s.kind, s.layer, p)] = pr
        naive_seconds.append(time.perf_counter() - t0)
        print(f"round {round_ + 1}: naive loop: {naive_seconds[-1]:.1f} s, {naive_flops / 1e9:.0f} GFLOP",
              file=sys.stderr, flush=True)
    print(f"naive loop: {statistics.median(naive_seconds):.1f} s (median of {args.rounds}), {naive_flops / 1e9:.0f} GFLOP")

    ok = True
    for one_token, res in ours.items():
        secs = statistics.median(res["seconds"])
        print(f"alignlens (one_token_last={one_token}): {secs:.1f} s (median), {res['flops'] / 1e9:.0f} GFLOP")
        if res["rows"].keys() != naive_rows.keys():
            print(f"FAIL: one_token_last={one_token}: the rows differ from the naive loop's")
            ok = False
            continue
        worst = max(float(np.abs(np.array([res["rows"][key]["probs"][lab] for lab in spec.labels]) - want).max())
                    for key, want in naive_rows.items())
        print(f"  max |p - p_naive| = {worst:.2g} (limit 1e-5)")
        ok &= worst <= 1e-5
        ratios = [n / o for n, o in zip(naive_seconds, res["seconds"])]
        print(f"  measured ratio naive / alignlens = {statistics.median(ratios):.2f}x (rounds: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}), FLOP ratio = {naive_flops / res['flops']:.2f}x")
    speedups = [f / t for f, t in zip(ours[False]["seconds"], ours[True]["seconds"])]
    print(f"one-token last runs: {statistics.median(speedups):.2f}x faster overall "
          f"({ours[False]['flops'] / ours[True]['flops']:.2f}x fewer FLOPs)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
