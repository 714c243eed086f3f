"""alignlens analyze vs the paper's analysis pipeline, on the same items: same results, and the speed ratio.

The paper's pipeline (Shimao-Zhang/LLM-Multilingual-Learner), with alignlens's prompts and label
token sets so the numbers are comparable, one item at a time:

1. evaluation pass (its emotion/snli/paws_eval scripts): `engine.reference_probs` on the evaluation
   prompt (English label words in the demonstrations): one forward pass with full-sequence logits,
   softmax at the last position, the probability of each label's token set;
2. analysis pass (`zsm_emotion_2shot.py`'s logit lens and `knowledge_finding.ipynb`'s states, on the
   lens prompt, i.e. alignlens analyze's default `--lens-prompts target-labels`: target-language label
   words in the demonstrations; for English the same prompt as the evaluation, which the paper still
   runs twice): `hf_model(input_ids, output_hidden_states=True)` at batch 1 (full-sequence logits, as
   any plain HF forward); the lens at every block's output, last position: final norm + LM head (+ the
   final soft-cap where the model has one: `engine.Unembed`), softmax, the probability of each label's
   English and target-language token sets, of the union of all labels' sets (the paper's
   `all_possible_latent` / `all_possible_out`) and the entropy in bits; the hidden states mean-pooled
   over the whole prompt, per row 0..n_layers (the notebook's PCA input), and at the last position.
   HF's last `hidden_states` entry is after the final norm; alignlens's lens and states use the last
   block's output before it (as the paper's lens, which applies norm + head to every block's output),
   so the paper side reads that one through a forward hook on the last decoder block. How far the
   notebook's literal last row (after the norm) is from it is printed, for information only.

The paper side is the cheaper reading of the paper's code, so the ratio is a lower bound: the paper's
lens (`llamawrapper.BlockOutputWrapper`) unembeds every position of every block's output several times
over, and its lens and PCA states come from two separate scripts (two passes); here the lens runs on
the last position only and one pass gives both. No neuron statistics on the paper side (the paper has
no LAPE); alignlens is timed as `alignlens analyze` runs by default: `pipeline.capture_run` (the
evaluation on the English-label prompts with its content-free calibration queries, a separate
capture pass on the target-label prompts with the logit lens, pooled states and MLP neuron counts)
plus `pipeline.run_analyses` (lens summaries, similarity with its bootstrap, neuron report); only
writing files and the PDF report are left out. The analyses' share is printed.

Checked (exit 1 if any fails): label probabilities (|diff| <= 1e-4), lens probabilities at every
layer (p_en, p_target, p_en_all, p_target_all: |diff| <= 1e-4 absolute; float32 logits through
batched vs batch-1 matmuls and a cached prefix differ by ~1e-6), lens entropy (|diff| <= 1e-3 bits:
float32 sums over the whole vocabulary, computed as H = logsumexp - E[z] by alignlens and as
-sum p log2 p here), pooled states (||diff|| / ||paper|| per item and row <= 1e-4).

Timing: the two methods alternately for `--rounds` rounds (load from other processes affects both
alike) after a short warm-up, each round's times on stderr; printed: items/s of each (medians), the
median ratio over rounds (the primary output; target >= 5), the same without alignlens's analyses
(which the paper side does not compute), and the CPU-time ratio. `--threads` sets torch's thread
count for both (default: torch's, one per core); on a machine whose cores other processes also use,
1 thread is much faster for both and far less noisy (see bench/eval_throughput.py). The GEMM peak is
measured before and after the rounds; the larger is the machine's limit the efficiencies refer to.

FLOP counting (bench/flops.py: a token through the body = 2 x non-embedding parameters, a position
through the LM head = 2 x d_model x vocabulary; attention scores, norms, softmax, pooling, neuron
counts and analyses not counted), useful work only:
- paper: every token of the evaluation prompt and of the lens prompt through body and head, plus
  n_layers lens positions through the head per item;
- alignlens: per pass and language the shared few-shot prefix once through the body (the tokens the
  pass caches: `engine.cached_lengths`, the demonstrations' only when the pass captures; in a pass
  that captures, a second shorter prefix for content-free queries that tokenize its end differently),
  each item's remaining tokens through the body and its last position through the head,
  plus n_layers lens positions per item in the capture pass; the evaluation pass also scores the 3
  content-free calibration queries per language (`evaluate.content_free_queries`, same call: extra
  work the paper's pipeline does not do, counted as in bench/eval_throughput.py). Not counted: padding.

Task: sentiment (the bundled task `emotion`, what the reference report uses; `--task snli` works
too: its long 6-shot prefix makes the prefix cache worth far more there).

    python bench/analyze_vs_paper.py [--task sentiment] [--items 12] [--languages en,zh,de] [--batch-size 8] \
        [--rounds 3] [--threads N]
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import comparison_parser, parse_and_set_threads  # noqa: E402
from flops import body_flops_per_token, describe, gemm_peak_gflops, head_flops_per_position, scoring_flops  # noqa: E402

from alignlens import data  # noqa: E402
from alignlens.config import AnalyzeConfig  # noqa: E402
from alignlens.engine import Unembed, decoder_body, encode, reference_probs  # noqa: E402
from alignlens.labels import label_sets, label_token_ids  # noqa: E402
from alignlens.model import LoadedModel, load_model  # noqa: E402
from alignlens.pipeline import capture_run, run_analyses  # noqa: E402
from alignlens.plan import capture_spec  # noqa: E402

#: Tolerances of the comparison (see the module docstring).
PROB_TOL = 1e-4
ENTROPY_TOL = 1e-3
STATE_REL_TOL = 1e-4
#: Task names of this bench -> bundled task.
TASK_ALIASES = {"sentiment": "emotion"}


@dataclass
class PaperResult:
    """The paper pipeline's values for one (task, language), float64 on CPU: probs [n, n_labels]
    (evaluation pass); p_en, p_target [n, n_layers, n_labels], p_en_all, p_target_all, entropy
    [n, n_layers] (lens, bits); prompt_mean, last [n, n_layers + 1, d_model] (states: row 0 the
    embedding output, row l + 1 block l's output before the final norm); last_row_normed [n, d_model]
    (the notebook's literal last row: the prompt mean of HF's final-normed last hidden state)."""

    indices: list[int]
    probs: np.ndarray
    p_en: np.ndarray
    p_target: np.ndarray
    p_en_all: np.ndarray
    p_target_all: np.ndarray
    entropy: np.ndarray
    prompt_mean: np.ndarray
    last: np.ndarray
    last_row_normed: np.ndarray


def resolve_task(name: str) -> data.TaskSpec:
    return data.load_task(TASK_ALIASES.get(name, name))


def lens_token_sets(model: LoadedModel, spec: data.TaskSpec, lang: str) -> tuple[list[list[int]], list[list[int]]]:
    """(English, target-language) token sets of each label, as alignlens's capture builds them."""
    tok, where = model.tokenizer, f"task {spec.name}, language {lang}"
    words = spec.prompts[lang].label_words
    return (label_sets(tok, spec.labels, where),
            [label_token_ids(tok, words.get(w, w), f"{where}, label {w!r}") for w in spec.labels])


@torch.no_grad()
def paper_analysis_item(model: LoadedModel, prompt: str, sets_en: list[list[int]], sets_tg: list[list[int]]
                        ) -> tuple[np.ndarray, ...]:
    """The paper's analysis pass of one prompt (batch 1, all hidden states): returns p_en, p_target
    [n_layers, n_labels], p_en_all, p_target_all, entropy [n_layers], prompt mean and last-position
    states [n_layers + 1, d_model] (before the final norm), and the prompt mean of HF's final-normed
    last hidden state [d_model]."""
    hf = model.hf_model
    last_block = decoder_body(hf).layers[-1]
    grabbed: dict[str, torch.Tensor] = {}

    def grab(module, args, output):
        grabbed["pre_norm"] = output[0] if isinstance(output, tuple) else output

    ids = torch.tensor(encode(model.tokenizer, [prompt]), device=model.device)
    handle = last_block.register_forward_hook(grab)
    try:
        hidden = hf(input_ids=ids, output_hidden_states=True).hidden_states  # n_layers + 1 entries [1, T, d]
    finally:
        handle.remove()
    rows = list(hidden[:-1]) + [grabbed["pre_norm"]]
    states = [r[0].float() for r in rows]  # [T, d] each
    prompt_mean = torch.stack([s.mean(0) for s in states])  # the notebook: torch.mean over the tokens
    last = torch.stack([s[-1] for s in states])
    logits = Unembed.from_hf(hf)(last[1:].to(model.dtype)).float()  # [n_layers, V]: norm + head (+ soft-cap)
    probs = torch.softmax(logits, dim=-1)

    def mass(sets: list[list[int]]) -> torch.Tensor:
        return torch.stack([probs[:, s].sum(-1) for s in sets], dim=-1)

    union_en = sorted({t for s in sets_en for t in s})
    union_tg = sorted({t for s in sets_tg for t in s})
    p = probs.double()
    entropy = -torch.special.xlogy(p, p).sum(-1) / math.log(2.0)  # the paper's -sum p log2 p (0 log 0 = 0)
    normed_mean = hidden[-1][0].float().mean(0)
    return tuple(x.double().cpu().numpy() for x in (
        mass(sets_en), mass(sets_tg), probs[:, union_en].sum(-1), probs[:, union_tg].sum(-1), entropy,
        prompt_mean, last, normed_mean))


def paper_pipeline(model: LoadedModel, spec: data.TaskSpec, lang: str, items: list[data.Item],
                   lens_prompts: str = "target-labels") -> PaperResult:
    """The paper's two passes over `items` of one language, one item at a time (module docstring)."""
    sets_en, sets_tg = lens_token_sets(model, spec, lang)
    lens_spec = capture_spec(spec, lang, lens_prompts) or spec
    probs = np.stack([reference_probs(model, data.build_prompt(spec, lang, it), sets_en).numpy() for it in items])
    per_item = [paper_analysis_item(model, data.build_prompt(lens_spec, lang, it), sets_en, sets_tg) for it in items]
    cols = [np.stack(c) for c in zip(*per_item)]
    return PaperResult([it.index for it in items], probs, *cols)


def run_alignlens(model: LoadedModel, cfg: AnalyzeConfig) -> tuple[list, dict, dict, float]:
    """`alignlens analyze` minus writing files: capture_run + run_analyses. Returns the results,
    captures, analyses and the seconds the analyses took."""
    results, caps = capture_run(model, cfg)
    t0 = time.perf_counter()
    analyses = run_analyses(results, caps, cfg)
    return results, caps, analyses, time.perf_counter() - t0


def compare(results: list, caps: dict, paper: dict[str, PaperResult]) -> dict[str, float]:
    """Max differences between alignlens's results and the paper pipeline's, over all languages:
    {"probs", "lens_probs", "entropy" (absolute), "prompt_mean", "last" (max per (item, row) of
    ||diff|| / ||paper||), "normed_last_row" (the same for the notebook's literal last row, information),
    "items" (0 if every language's items agree, else 1)}."""
    out = dict.fromkeys(("probs", "lens_probs", "entropy", "prompt_mean", "last", "normed_last_row", "items"), 0.0)

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float((np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-30)).max())

    for r in results:
        p = paper[r.lang]
        if r.indices != p.indices:
            out["items"] = 1.0
            continue
        n = len(r.indices)
        cap = caps[(r.task, r.lang)]
        lens = cap.lens(r.gold)
        out["probs"] = max(out["probs"], float(np.abs(r.probs - p.probs).max()))
        for mine, theirs in ((lens.p_en, p.p_en), (lens.p_target, p.p_target), (lens.p_en_all, p.p_en_all),
                             (lens.p_target_all, p.p_target_all)):
            out["lens_probs"] = max(out["lens_probs"], float(np.abs(mine.double().numpy() - theirs).max()))
        out["entropy"] = max(out["entropy"], float(np.abs(lens.entropy_bits.double().numpy() - p.entropy).max()))
        mean = cap.pooled("prompt")[:n].double().numpy()
        out["prompt_mean"] = max(out["prompt_mean"], rel(mean, p.prompt_mean))
        out["last"] = max(out["last"], rel(cap.pooled("last")[:n].double().numpy(), p.last))
        out["normed_last_row"] = max(out["normed_last_row"], rel(mean[:, -1], p.last_row_normed))
    return out


def failures(diff: dict[str, float]) -> list[str]:
    """The checks `diff` (from `compare`) fails."""
    bad = []
    if diff["items"]:
        bad.append("the two methods scored different items")
    for key, tol in (("probs", PROB_TOL), ("lens_probs", PROB_TOL), ("entropy", ENTROPY_TOL),
                     ("prompt_mean", STATE_REL_TOL), ("last", STATE_REL_TOL)):
        if not diff[key] <= tol:  # NaN fails too
            bad.append(f"{key} differ by {diff[key]:.2e} > {tol:g}")
    return bad


def counted_flops(model: LoadedModel, spec: data.TaskSpec, items: dict[str, list[data.Item]],
                  lens_prompts: str = "target-labels") -> tuple[float, float]:
    """(paper, alignlens) useful FLOPs over all items (the counting convention of the module docstring)."""
    fb, fh = body_flops_per_token(model.hf_model), head_flops_per_position(model.hf_model)
    L, tok = model.n_layers, model.tokenizer
    paper = fast = 0.0
    for lang, its in items.items():
        cap = capture_spec(spec, lang, lens_prompts)
        lens_spec = cap or spec
        for s in (spec, lens_spec):
            paper += sum(len(p) * (fb + fh) for p in encode(tok, [data.build_prompt(s, lang, it) for it in its]))
        paper += len(its) * L * fh
        probed = cap is None  # the evaluation pass also captures
        fast += scoring_flops(model, spec, lang, its, probed=probed, calibrate=True, lens_layers=L if probed else 0)
        if cap is not None:
            fast += scoring_flops(model, cap, lang, its, probed=True, calibrate=False, lens_layers=L)
    return paper, fast


def main() -> None:
    args = parse_and_set_threads(comparison_parser(__doc__.splitlines()[0], task="sentiment", items=12,
                                                   task_help="sentiment (= emotion), snli or paws"))
    model = load_model(args.model)
    spec = resolve_task(args.task)
    langs = data.task_languages(spec, args.languages.split(","))
    cfg = AnalyzeConfig(tasks=[spec.name], languages=langs, limit=args.items, batch_size=args.batch_size)
    items = {lang: cfg.select_items(data.load_items(spec, lang), spec.labels, f"task {spec.name}, language {lang}")
             for lang in langs}
    n = sum(len(v) for v in items.values())

    # warm-up (first-call costs of both code paths), not timed
    capture_run(model, AnalyzeConfig(tasks=[spec.name], languages=[langs[-1]], limit=2, batch_size=2))
    paper_pipeline(model, spec, langs[-1], items[langs[-1]][:1])

    peak_before = gemm_peak_gflops()
    t_fast, t_ref, c_fast, c_ref, t_analyses = [], [], [], [], []
    for _ in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        results, caps, _, ta = run_alignlens(model, cfg)
        t_fast.append(time.perf_counter() - t0)
        c_fast.append(time.process_time() - c0)
        t_analyses.append(ta)
        t0, c0 = time.perf_counter(), time.process_time()
        paper = {lang: paper_pipeline(model, spec, lang, items[lang]) for lang in langs}
        t_ref.append(time.perf_counter() - t0)
        c_ref.append(time.process_time() - c0)
        print(f"round {len(t_ref)}: alignlens {t_fast[-1]:.1f}s, paper's pipeline {t_ref[-1]:.1f}s", file=sys.stderr)
    diff = compare(results, caps, paper)
    peak_after = gemm_peak_gflops()
    peak = max(peak_before, peak_after)
    f_paper, f_fast = counted_flops(model, spec, items)
    tf, tr = statistics.median(t_fast), statistics.median(t_ref)
    print(f"model {args.model}, task {spec.name}, {n} items ({args.items} x {len(langs)} languages), "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.rounds} alternating rounds (medians)")
    print(f"paper's pipeline (eval pass + analysis pass, batch 1, full logits, all hidden states): "
          f"{n / tr:6.2f} items/s ({tr:.1f}s)")
    print(f"alignlens analyze (capture_run + run_analyses, neurons included):                  "
          f"{n / tf:6.2f} items/s ({tf:.1f}s, of which analyses {statistics.median(t_analyses):.1f}s)")
    print(describe("  paper's pipeline", f_paper, tr, peak, n))
    print(describe("  alignlens       ", f_fast, tf, peak, n))
    print(f"max |label prob diff| {diff['probs']:.2e} (tol {PROB_TOL:g}); max |lens prob diff| {diff['lens_probs']:.2e} "
          f"(tol {PROB_TOL:g}); max |lens entropy diff| {diff['entropy']:.2e} bits (tol {ENTROPY_TOL:g})")
    print(f"pooled states, max ||diff|| / ||paper||: prompt mean {diff['prompt_mean']:.2e}, last position "
          f"{diff['last']:.2e} (tol {STATE_REL_TOL:g}); the notebook's literal last row (after the final norm) vs "
          f"alignlens's (before it): {diff['normed_last_row']:.2f} (documented difference, not checked)")
    ratios = [r / f for r, f in zip(t_ref, t_fast)]
    print(f"ratio: {statistics.median(ratios):.2f}x median of rounds {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(target >= 5; FLOP ratio {f_paper / f_fast:.1f}x)")
    bare = [r / (f - a) for r, f, a in zip(t_ref, t_fast, t_analyses)]
    print(f"ratio without alignlens's analyses (capture_run alone): {statistics.median(bare):.2f}x median of rounds "
          f"{', '.join(f'{r:.2f}' for r in bare)}")
    cpu = [r / f for r, f in zip(c_ref, c_fast)]
    print(f"CPU-time ratio: {statistics.median(cpu):.2f}x median of rounds {', '.join(f'{r:.2f}' for r in cpu)} "
          "(process CPU seconds: less affected by other processes' load)")
    print(f"GEMM peak measured before / after the rounds: {peak_before:.1f} / {peak_after:.1f} GFLOP/s")
    bad = failures(diff)
    if bad:
        raise SystemExit("alignlens and the paper's pipeline disagree: " + "; ".join(bad))


if __name__ == "__main__":
    main()
