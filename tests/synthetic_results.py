"""Synthetic results folders (the schemas `alignlens analyze` writes), for report tests.

`make_synthetic_run(dir, seed, languages, n_layers, trained=[...])` writes one run folder:
manifest.json, summary.json, logit_lens.json, similarity.json, neurons.json (the last three can be
left out with `analyses=`). Numbers are random but shaped like real results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

ALL_LANGUAGES = ["en", "zh", "de", "fr", "es", "it", "nl", "ja", "ru", "sv",
                 "sl", "pl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn"]  # fmt: skip
LOW = {"sl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn"}
TASK_LABELS = {"emotion": ["positive", "negative"], "snli": ["entailment", "neutral", "contradiction"], "paws": ["yes", "no"]}
SIM_KEYS = ["cosine_mean", "cosine_last", "cosine_mean_centered", "cosine_last_centered", "pca_pearson",
            "cka_mean", "cka_last", "retrieval_mean", "retrieval_last"]  # fmt: skip


def _wilson(k: int, n: int) -> list[float]:
    if n == 0:
        return [float("nan"), float("nan")]
    z = 1.96
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, c - h), min(1.0, c + h)]


def _round(x):
    return [round(float(v), 5) for v in x]


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
) -> Path:
    """Write a synthetic run folder at `dir` and return it.

    `boost` raises accuracy (more for `trained` languages) and English-alignment of the lens and
    similarity curves, so a "base" (boost 0) vs "aligned" (boost > 0) pair shows visible changes.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    trained = list(trained or [])
    L = n_layers
    depth = np.linspace(0, 1, L)
    name = model_name or ("synthetic-aligned" if boost else "synthetic-base")

    manifest = {
        "alignlens_version": "0.1.0",
        "command": f"alignlens analyze --model {name} --out {dir.parent}",
        "model": {"spec": f"synthetic:{name}", "name": name, "path": f"/models/{name}", "hash": "%032x" % seed,
                  "dtype": "float32", "device": "cpu"},  # fmt: skip
        "data": {"tasks": list(tasks), "languages": list(languages), "limit": n_items, "hash": "ab" * 16},
        "options": {"shots": 4, "batch_size": 8, "similarity_layers": "all", "neuron_threshold": 0.95},
        "seed": seed,
        "versions": {"torch": "2.6.0", "transformers": "5.10.0", "transformer_lens": "4.3.0", "python": "3.11"},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "started": "2025-01-01T10:00:00+00:00",
        "finished": "2025-01-01T10:42:00+00:00",
        "trained_languages": trained,
    }
    (dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")

    summary: dict = {"tasks": {}}
    for t in tasks:
        labels = TASK_LABELS.get(t, ["a", "b"])
        k_lab = len(labels)
        langs = {}
        for l in languages:
            base = (0.78 if l == "en" else 0.52 if l in LOW else 0.66) - 0.08 * (k_lab - 2)
            acc_true = np.clip(base + boost * (1.6 if l in trained else 1.0) + rng.normal(0, 0.04), 0.05, 0.98)
            k = int(rng.binomial(n_items, acc_true))
            conf = {g: {p: 0 for p in labels} for g in labels}
            for j in range(n_items):
                g = labels[j % k_lab]
                p = g if j < k else labels[(j + 1) % k_lab]
                conf[g][p] += 1
            langs[l] = {"accuracy": k / n_items, "n": n_items, "ci95": _wilson(k, n_items), "confusion": conf}
        summary["tasks"][t] = {
            "labels": labels,
            "languages": langs,
            "mean_accuracy": float(np.mean([v["accuracy"] for v in langs.values()])),
        }
    (dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")

    if "lens" in analyses:
        lens: dict = {"tasks": {}}
        for t in tasks:
            per = {}
            for l in languages:
                bump = np.exp(-((depth - 0.65) ** 2) / 0.02)
                if l == "en":
                    p_en = 0.05 + 0.85 * depth**3
                    p_tg = p_en
                else:
                    p_en = np.clip(0.02 + (0.35 + boost * 2) * bump + rng.normal(0, 0.01, L), 0, 1)
                    p_tg = np.clip(0.01 + (0.5 + boost) * depth**4 + rng.normal(0, 0.01, L), 0, 1)
                ent = np.clip(12 * (1 - depth) ** 1.5 + 1 + rng.normal(0, 0.2, L), 0, None)
                series = lambda m, w: {"mean": _round(m), "lo": _round(np.clip(m - w, 0, None)), "hi": _round(m + w)}  # noqa: E731
                per[l] = {
                    "n": n_items,
                    "n_dropped_overlap": 0,
                    "p_en": series(p_en, 0.04),
                    "p_target": series(p_tg, 0.04),
                    "p_correct": series((p_en + p_tg) / 2, 0.04),
                    "entropy_bits": series(ent, 0.3),
                }
            lens["tasks"][t] = {"n_layers": L, "per_language": per}
        (dir / "logit_lens.json").write_text(json.dumps(lens), encoding="utf-8")

    if "similarity" in analyses:
        sim: dict = {"tasks": {}}
        chosen = sorted({0, L // 3, (2 * L) // 3, L - 1})
        for t in tasks:
            per = {}
            for l in languages:
                lvl = 1.0 if l == "en" else (0.55 if l in LOW else 0.7) + boost * (2 if l in trained else 1)
                curve = np.clip(lvl * (0.4 + 0.6 * np.sin(np.pi * (0.15 + 0.7 * depth))) + rng.normal(0, 0.01, L), 0, 1)
                per[l] = {k: _round(np.clip(curve * (0.9 + 0.1 * i / 8), 0, 1)) for i, k in enumerate(SIM_KEYS)}
            n = len(languages)
            mats_cka, mats_cos = [], []
            for layer in chosen:
                base = rng.uniform(0.3, 0.6, (n, n)) + 0.3 * (layer / max(L - 1, 1)) + boost
                m = np.clip((base + base.T) / 2, 0, 1)
                np.fill_diagonal(m, 1.0)
                mats_cka.append([_round(r) for r in m])
                mats_cos.append([_round(r) for r in np.clip(m * 0.95, 0, 1)])
            sim["tasks"][t] = {
                "n_items": n_items,
                "n_layers": L,
                "languages": list(languages),
                "per_language": per,
                "pairwise": {"layers": chosen, "languages": list(languages), "cka_mean": mats_cka, "cosine_mean": mats_cos},
            }
        (dir / "similarity.json").write_text(json.dumps(sim), encoding="utf-8")

    if "neurons" in analyses:
        specific = {}
        sets = {}
        for li, l in enumerate(languages):
            count = int(rng.integers(5, 40)) + (10 if l in LOW else 0)
            layer_p = np.exp(-((depth - 0.1) ** 2) / 0.03) + np.exp(-((depth - 0.9) ** 2) / 0.03) + 0.05
            layers = rng.choice(L, size=count, p=layer_p / layer_p.sum())
            idx = rng.integers(0, d_mlp, size=count)
            pairs = sorted({(int(a), int(b)) for a, b in zip(layers, idx)})
            sets[l] = set(pairs)
            cpl = [0] * L
            for a, _ in pairs:
                cpl[a] += 1
            specific[l] = {"count": len(pairs), "count_per_layer": cpl, "neurons": [list(p) for p in pairs]}
        n = len(languages)

        def jacc(a, b):
            return len(a & b) / len(a | b) if a | b else 0.0

        spec_overall = [[round(jacc(sets[a], sets[b]), 4) for b in languages] for a in languages]
        act = rng.uniform(0.4, 0.8, (n, n))
        act = (act + act.T) / 2
        np.fill_diagonal(act, 1.0)
        neurons = {
            "options": {"activation_threshold": 0.0, "top_rate": 0.01, "max_languages": 2},
            "n_layers": L,
            "d_mlp": d_mlp,
            "languages": list(languages),
            "n_tokens": {l: 5000 for l in languages},
            "specific": specific,
            "overlap": {
                "active": {"overall": [_round(r) for r in act], "per_layer": [[_round(r) for r in act] for _ in range(L)]},
                "specific": {"overall": spec_overall, "per_layer": [spec_overall for _ in range(L)]},
            },
        }
        (dir / "neurons.json").write_text(json.dumps(neurons), encoding="utf-8")
    return dir


def make_synthetic_pair(root: Path, languages: list[str], n_layers: int, **kw) -> tuple[Path, Path]:
    """root/base (no trained languages) and root/aligned (trained on zh, de, boosted)."""
    base = make_synthetic_run(Path(root) / "base", 1, languages, n_layers, trained=[], **kw)
    aligned = make_synthetic_run(Path(root) / "aligned", 2, languages, n_layers, trained=["zh", "de"], boost=0.06, **kw)
    return base, aligned
