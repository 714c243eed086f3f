"""Synthetic results folders written by the real writers, for report tests.

`make_synthetic_run(dir, seed, languages, n_layers, trained=[...])` writes one run folder exactly as
`alignlens analyze` does (same functions, same schemas): predictions.jsonl, summary.json and
manifest.json through `evaluate.write_eval` / `evaluate.make_manifest`; logit_lens.json through
`lens.lens_report`; similarity.json through `similarity.similarity_report`; neurons.json and
neurons.safetensors through `neurons.neuron_report` (the last three can be left out with `analyses=`).
Only the model is fake: per-item label probabilities, content-free label probabilities (for the
calibrated accuracy), lens probabilities, hidden states and neuron activation counts are random but
shaped like real results (label probabilities are a softmax of noisy logits with item easiness
shared across languages and runs; gold label weights, a label bias and per-language accuracies can
be set, e.g. to make a label-prior shift). `make_synthetic_pair` also writes the
pair's comparison.json with `pipeline.compare_models`, as `analyze --compare` does.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from alignlens import data, results
from alignlens.config import AnalyzeConfig, parse_items
from alignlens.evaluate import LanguageResult, write_eval
from alignlens.results.manifest import make_manifest
from alignlens.lens import LensCapture, lens_report
from alignlens.neurons import NeuronOptions, neuron_report
from alignlens.similarity import similarity_report

ALL_LANGUAGES = ["en", "zh", "de", "fr", "es", "it", "nl", "ja", "ru", "sv",
                 "sl", "pl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn"]  # fmt: skip
LOW = {"sl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn"}
D_MODEL = 16
BOOTSTRAP = 300  # resamples of the accuracy intervals (real runs: 2000; fewer keeps the tests fast)


class SyntheticModel:
    """Stands in for `model.LoadedModel` where the manifest needs it (`describe()`, `info`)."""

    def __init__(self, name: str, seed: int, n_layers: int, d_mlp: int, trained: list[str]) -> None:
        self.name, self.seed, self.n_layers, self.d_mlp = name, seed, n_layers, d_mlp
        self.info = {"trained_languages": list(trained)}

    def describe(self) -> dict:
        return {
            "spec": f"synthetic:{self.name}", "name": self.name, "path": f"/models/{self.name}",
            "hash": "%064x" % self.seed, "dtype": "float32", "device": "cpu", "n_layers": self.n_layers,
            "d_model": D_MODEL, "d_mlp": self.d_mlp, "architecture": "SyntheticForCausalLM", **self.info,
        }  # fmt: skip


def _accuracy_target(lang: str, n_labels: int, boost: float, trained: list[str], rng) -> float:
    base = (0.78 if lang == "en" else 0.52 if lang in LOW else 0.66) - 0.08 * (n_labels - 2)
    return float(np.clip(base + boost * (1.6 if lang in trained else 1.0) + rng.normal(0, 0.04), 0.05, 0.98))


def _task_seed(task: str) -> int:
    return zlib.crc32(task.encode())


def gold_labels(task: str, k: int, indices: list[int], weights: Sequence[float] | None = None) -> list[int]:
    """Gold label ids of items `indices`: i % k (balanced), or drawn with `weights` per label from a
    generator seeded by the task and item alone, so every run and language has the same gold."""
    if weights is None:
        return [i % k for i in indices]
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    return [int(np.random.default_rng([_task_seed(task), i]).choice(k, p=w)) for i in indices]


def _language_result(task: str, labels: list[str], lang: str, indices: list[int], acc: float, rng, *,
                     gold_weights: Sequence[float] | None = None, label_bias: Mapping[str, float] | None = None,
                     difficulty: float = 1.0) -> LanguageResult:
    """Per-item label probabilities shaped like a real model's (softmax of noisy label logits).

    Item i is answered right with probability Phi(Phi^-1(acc) sqrt(1 + d^2) + d z_i), z_i ~ N(0, 1)
    fixed per task and item (an item's easiness, shared by every language and run; d = `difficulty`),
    so the expected accuracy is `acc` and two runs' answers are correlated item by item, as real runs
    are. The chosen label leads by a graded margin and the gold label gets some evidence even when
    wrong, so ROC-AUC tracks the evidence rather than just correctness. `label_bias` adds a logit
    offset to a label before the argmax (a label-prior shift: with a large offset the model predicts
    that label for every item)."""
    from scipy.stats import norm

    k = len(labels)
    gold = gold_labels(task, k, indices, gold_weights)
    z = np.array([np.random.default_rng([_task_seed(task), 7, i]).normal() for i in indices])
    a = norm.ppf(np.clip(acc, 1e-3, 1 - 1e-3))
    p_right = norm.cdf(a * np.sqrt(1 + difficulty**2) + difficulty * z)
    bias = np.array([float((label_bias or {}).get(lab, 0.0)) for lab in labels])
    probs = np.zeros((len(indices), k))
    for row, g in enumerate(gold):
        top = g if rng.random() < p_right[row] else (g + 1 + int(rng.integers(0, k - 1))) % k
        logits = rng.normal(0.0, 0.5, k)
        if top != g:
            logits[g] += abs(rng.normal(0.0, 0.4))  # the gold label is often the runner-up
        logits[top] = np.max(np.delete(logits, top)) + 0.05 + rng.exponential(0.6)
        e = np.exp(logits + bias - np.max(logits + bias))
        probs[row] = e / e.sum()
    return LanguageResult(task, lang, list(labels), list(indices), gold, probs)


def _content_free(labels: list[str], label_bias: Mapping[str, float] | None, rng) -> np.ndarray:
    """float64 [n_labels]: synthetic content-free label probabilities, softmax(label bias + noise):
    the model's preference among the labels without content, which contextual calibration divides out."""
    bias = np.array([float((label_bias or {}).get(lab, 0.0)) for lab in labels]) + rng.normal(0.0, 0.3, len(labels))
    e = np.exp(bias - bias.max())
    return e / e.sum()


def _lens(results_: list[LanguageResult], n_layers: int, boost: float, rng, no_items: tuple[str, ...]) -> dict:
    """lens_report of synthetic per-item lens probabilities ([n, L, labels]) for one task."""
    depth = np.linspace(0, 1, n_layers)
    bump = np.exp(-((depth - 0.65) ** 2) / 0.02)
    caps = {}
    for r in results_:
        n, k = len(r.gold), len(r.labels)
        if r.lang == "en":
            gold_en = 0.05 + 0.85 * depth**3
            gold_tg = gold_en
        else:
            gold_en = 0.02 + (0.35 + boost * 2) * bump
            gold_tg = 0.01 + (0.5 + boost) * depth**4
        p_en = np.clip(rng.normal(0.02, 0.01, (n, n_layers, k)), 0, 1)
        p_tg = np.clip(rng.normal(0.02, 0.01, (n, n_layers, k)), 0, 1)
        rows = np.arange(n)
        p_en[rows, :, r.gold] = np.clip(gold_en + rng.normal(0, 0.15, (n, n_layers)), 0, 1)
        p_tg[rows, :, r.gold] = np.clip(gold_tg + rng.normal(0, 0.15, (n, n_layers)), 0, 1)
        ent = np.clip(12 * (1 - depth) ** 1.5 + 1 + rng.normal(0, 1.0, (n, n_layers)), 0, None)
        overlap = np.full(k, r.lang in no_items)
        caps[r.lang] = LensCapture(p_en, p_tg, ent, np.array(r.gold), overlap)
    return lens_report(caps)


def _similarity(results_: list[LanguageResult], n_layers: int, boost: float, trained: list[str], seed: int) -> dict:
    """similarity_report of synthetic hidden states [n, L, D_MODEL] that share an item signal."""
    n = min(len(r.gold) for r in results_)
    shared = np.random.default_rng(1000).normal(size=(n, D_MODEL))  # the items' meaning, the same in every run
    rng = np.random.default_rng(seed)
    depth = np.linspace(0, 1, n_layers)
    mean, last = {}, {}
    for r in results_:
        lvl = 1.0 if r.lang == "en" else (0.55 if r.lang in LOW else 0.7) + boost * (2 if r.lang in trained else 1)
        share = np.clip(lvl * (0.4 + 0.6 * np.sin(np.pi * (0.15 + 0.7 * depth))), 0.05, 1.0)[None, :, None]
        offset = rng.normal(size=(1, 1, D_MODEL))
        noise = rng.normal(size=(n, n_layers, D_MODEL))
        mean[r.lang] = torch.tensor(share * shared[:, None, :] + (1 - share) * (noise + offset), dtype=torch.float32)
        last[r.lang] = mean[r.lang] + 0.1 * torch.randn(mean[r.lang].shape, generator=torch.Generator().manual_seed(seed))
    layers = sorted({0, n_layers // 3, (2 * n_layers) // 3, n_layers - 1})
    return similarity_report(mean, last, layers)


def _neurons(languages: list[str], n_layers: int, d_mlp: int, seed: int, options: NeuronOptions) -> tuple[dict, dict]:
    """neuron_report of synthetic activation counts: each language has a few neurons of its own
    (mostly in the first and last layers; most of them shared between runs, some run-specific)."""
    rng = np.random.default_rng(seed)
    depth = np.linspace(0, 1, n_layers)
    layer_p = np.exp(-((depth - 0.1) ** 2) / 0.03) + np.exp(-((depth - 0.9) ** 2) / 0.03) + 0.05
    n_tokens = 5000
    p_all = rng.uniform(0.0, 0.1, (n_layers, d_mlp))
    states = {}
    for lang in languages:
        own = np.random.default_rng([ord(c) for c in lang])  # the same in every run
        count = int(own.integers(2, 6)) + (2 if lang in LOW else 0)
        layers = np.concatenate([own.choice(n_layers, size=count, p=layer_p / layer_p.sum()),
                                 rng.choice(n_layers, size=3, p=layer_p / layer_p.sum())])
        idx = np.concatenate([own.integers(0, d_mlp, size=count), rng.integers(0, d_mlp, size=3)])
        p = np.clip(p_all + rng.normal(0, 0.01, p_all.shape), 0, 1)
        p[layers, idx] = 0.95
        counts = np.round(p * n_tokens)
        states[lang] = {"counts": torch.tensor(counts), "n_tokens": torch.full((n_layers,), float(n_tokens))}
    report, tensors = neuron_report(states, options)
    return report, tensors


def make_synthetic_run(
    dir: Path,
    seed: int,
    languages: list[str],
    n_layers: int,
    trained: list[str] | None = ["zh", "de"],  # noqa: B006 (read-only default)
    *,
    tasks: tuple[str, ...] = ("emotion", "snli", "paws"),
    boost: float = 0.0,
    n_items: int = 120,
    d_mlp: int = 64,
    model_name: str | None = None,
    analyses: tuple[str, ...] = ("lens", "similarity", "neurons"),
    lens_no_items: tuple[str, ...] = (),
    role: str | None = None,
    accuracy: Mapping[str, float] | None = None,
    gold_weights: Sequence[float] | None = None,
    label_bias: Mapping[str, float] | None = None,
    content_free: bool = True,
    items: str | None = None,
    limit: int | None = None,
) -> Path:
    """Write a synthetic run folder at `dir` (items 0..n_items-1 of each task and language, as
    `--limit n_items` would) and return it.

    `boost` raises accuracy (more for `trained` languages) and English-alignment of the lens and
    similarity curves, so a "base" (boost 0) vs "aligned" (boost > 0) pair shows visible changes.
    `lens_no_items`: languages whose every label's English and target words overlap (the logit
    lens keeps no item of theirs, as with the token-set rule on shared words).
    `accuracy`: expected accuracy per language (overrides the boost-based one for those languages);
    `gold_weights`: label weights of the gold answers (default: balanced, item i has label i % k),
    the same in every run; `label_bias`: logit offset per label name (see `_language_result`).
    `content_free`: give each language content-free label probabilities (`_content_free`), so
    summary.json has calibrated accuracies; False leaves them out (None, as unmeasured).
    `items` / `limit`: the run's `--items` and `--limit` as the CLI records them (e.g. items "0-3" with
    the default limit 50 evaluates items 0-3); by default items 0..n_items-1 as `--limit n_items`.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    trained = list(trained or [])
    name = model_name or ("synthetic-aligned" if boost else "synthetic-base")
    config = AnalyzeConfig(tasks=list(tasks), languages=list(languages), limit=n_items if limit is None and items is None else limit,
                           seed=seed, bootstrap_resamples=BOOTSTRAP, neurons=NeuronOptions(top_rate=0.25), items=items)  # fmt: skip
    indices = list(range(n_items)) if items is None else list(parse_items(items))[: config.limit]
    model = SyntheticModel(name, seed, n_layers, d_mlp, trained)
    started = results.now_iso()

    per_task: dict[str, list[LanguageResult]] = {}
    rng_cf = np.random.default_rng([seed, 99])  # content-free probabilities: their own stream, so `rng` draws as before
    for t in tasks:
        labels = list(data.load_task(t).labels)
        for lang in languages:
            acc = _accuracy_target(lang, len(labels), boost, trained, rng)
            acc = (accuracy or {}).get(lang, acc)
            r = _language_result(t, labels, lang, indices, acc, rng, gold_weights=gold_weights, label_bias=label_bias)
            if content_free:
                r.p_content_free = _content_free(labels, label_bias, rng_cf)
            per_task.setdefault(t, []).append(r)

    if "lens" in analyses:
        lens = {"tasks": {t: {**_lens(rs, n_layers, boost, rng, lens_no_items), "overlap_rule": config.lens_overlap}
                          for t, rs in per_task.items()}}  # fmt: skip
        results.write_json(dir / "logit_lens.json", lens)
    if "similarity" in analyses:
        sim = {"tasks": {t: _similarity(rs, n_layers, boost, trained, seed) for t, rs in per_task.items()
                         if any(r.lang == "en" for r in rs)}}  # fmt: skip
        results.write_json(dir / "similarity.json", sim)
    if "neurons" in analyses:
        from safetensors.torch import save_file

        report, tensors = _neurons(list(languages), n_layers, d_mlp, seed, config.neurons)
        report["tasks"] = sorted(per_task)
        results.write_json(dir / "neurons.json", report)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(dir / "neurons.safetensors"))

    from dataclasses import asdict

    extra = {"options": asdict(config), "role": role or ("aligned" if boost else "base")}
    manifest = make_manifest(model, config.eval_config(), command=f"alignlens analyze --model {name} --out {dir.parent}",
                             started=started, extra=extra)  # fmt: skip
    write_eval(dir, [r for rs in per_task.values() for r in rs], manifest, config.eval_config())
    return dir


def write_comparison(root: Path, base: Path, aligned: Path) -> Path:
    """root/comparison.json from the two runs, written by the function `alignlens analyze --compare` uses."""
    from alignlens.pipeline import compare_models

    trained = json.loads((aligned / "manifest.json").read_text(encoding="utf-8")).get("trained_languages", [])
    path = Path(root) / "comparison.json"
    results.write_json(path, compare_models(base, aligned, trained, AnalyzeConfig(bootstrap_resamples=200)))
    return path


def make_synthetic_pair(root: Path, languages: list[str], n_layers: int, **kw) -> tuple[Path, Path]:
    """root/base (no trained languages) and root/aligned (trained on zh, de, boosted), plus
    root/comparison.json when both have neurons."""
    base = make_synthetic_run(Path(root) / "base", 1, languages, n_layers, trained=[], **kw)
    aligned = make_synthetic_run(Path(root) / "aligned", 2, languages, n_layers, trained=["zh", "de"], boost=0.06, **kw)
    if (base / "neurons.json").is_file() and (aligned / "neurons.json").is_file():
        write_comparison(root, base, aligned)
    return base, aligned
