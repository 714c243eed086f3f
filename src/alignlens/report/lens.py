"""Logit-lens section, as the paper's figures (its zsm_emotion_2shot.py, after Wendler et al. 2024).

Pages per task:
- the paper's figure: P(English gold label set) ("latent") and P(target-language gold label set)
  ("out"), and the all-label sums of each, against relative depth layer / (layers - 1), averaged over
  the non-English languages (`language_average`: the mean of the per-language means, each language
  weighted equally; band: 95% Student-t interval across languages), run a vs run b, with the mean
  entropy strip below;
- per language: the same curves by layer with 95% intervals over items, entropy strip below.
Plus logit_lens.csv and a summary line. The prompts the lens ran on (`lens_prompts` in
logit_lens.json: target-label prompts as the paper, or the English-label evaluation prompts, where
P(target) is ~0 by construction) are named on every page.

Two runs are overlaid only on the languages both have, only where both evaluated the same items
and only when both ran the lens on the same prompts: lens values are saved as means over each
run's own items, so they cannot be restricted to shared items afterwards -- otherwise each run gets
its own pages. Models of different depth are drawn against relative depth. A panel with no item
(all dropped by the overlap rule) says why, and under the token-set rule that `--lens-overlap
first-token` keeps them; a language whose kept items all have one gold label is flagged (its lens
mean is that label's alone). Per language, where P(target) peaks (layer, value, relative depth) is
marked on its panel, listed in logit_lens_peaks.csv and in the summary.
"""

from __future__ import annotations

import math

import numpy as np

from alignlens.lens import curve_peak
from alignlens.report.languages import lang_label, order_languages
from alignlens.report.layout import COLOR, LINESTYLE, Page, Section, Table, int_layers, new_fig, top
from alignlens.report.runs import Runs, arr
from alignlens.stats import mean_ci

QUANTITIES = ("p_en", "p_target", "p_en_all", "p_target_all", "entropy_bits")
PROBABILITIES = ("p_en", "p_target", "p_en_all", "p_target_all")
#: Curve colours: the gold label's sets dark, the all-label sums light (thinner) in the same hue.
COLORS = {"p_en": COLOR["p_en"], "p_target": COLOR["p_target"], "p_en_all": "#A68BCB", "p_target_all": "#6CC4A8"}
NAMES = {"p_en": "P(English gold label) — latent", "p_target": "P(target-language gold label) — out",
         "p_en_all": "P(any English label) — all latent", "p_target_all": "P(any target-language label) — all out"}
PROMPTS_TEXT = {
    "target-labels": "on target-label prompts (the demonstrations carry the language's label words, as the paper's lens)",
    "english-labels": "on the English-label evaluation prompts (the target-language word never appears in them, so "
                      "P(target) is near 0 by construction; use --lens-prompts target-labels for the paper's lens)",
}
Group = tuple[list[int], list[str]]  # (run indices drawn together, languages)


def lens_prompts(tdict: dict) -> str:
    """The prompts a run's lens ran on (`lens_prompts` of its task entry; files written before the
    option existed used the English-label evaluation prompts)."""
    return tdict.get("lens_prompts") or "english-labels"


def build(runs: Runs) -> Section:
    """Lens pages per task (and per run where they cannot be overlaid), logit_lens.csv, summary lines."""
    section = Section()
    if not any(r.lens is not None for r in runs.runs):
        return section
    csv_rows, peak_rows = [], []
    for task in runs.tasks("lens"):
        tdicts = [(r.lens or {}).get("tasks", {}).get(task, {}) for r in runs.runs]
        per = [t.get("per_language", {}) for t in tdicts]
        rule = next((t["overlap_rule"] for t in tdicts if t.get("overlap_rule")), "token-set")
        modes = [lens_prompts(t) for t in tdicts]
        csv_rows += _csv_rows(runs, task, per, modes)
        peak_rows += _peak_rows(runs, task, per, modes)
        groups, notes = _plan(runs, task, per, modes)
        notes += flag_notes(runs, task, per, rule)
        if runs.depth_axis:
            notes.append(f"The models have {runs.overlap.n_layers[0]} and {runs.overlap.n_layers[1]} layers: "
                         "the x axis is relative depth, layer / (layers − 1).")  # fmt: skip
        line = _summary_line(runs, task, per, groups, modes)
        section.summary_lines += [line] if line else []
        section.summary_lines += peak_lines(runs, task, per, groups) + [f"   – {n}" for n in flag_notes(runs, task, per, rule)]
        for idxs, langs in groups:
            own = len(groups) > 1 and len(idxs) == 1
            suffix = f" ({runs.roles[idxs[0]]})" if own else ""
            series = [(i, per[i]) for i in idxs]
            mode = modes[idxs[0]]
            title = f"Logit lens — {task}, mean over languages" + suffix
            if any(l != "en" for l in langs):
                section.pages.append(Page("Logit lens", title, f"logit_lens_{task}{'_' + runs.roles[idxs[0]] if own else ''}_mean",
                                          lambda t=title, s=series, c=langs, m=mode, n=" ".join(notes): _draw_average(runs, t, s, c, m, n)))  # fmt: skip
            title = f"Logit lens — {task}" + suffix
            for start in range(0, len(langs), 20):
                slug = f"logit_lens_{task}{'_' + runs.roles[idxs[0]] if own else ''}_{start // 20}"
                section.pages.append(Page("Logit lens", title, slug, lambda t=title, s=series, c=langs[start : start + 20],
                                          m=mode, n=" ".join(notes): _draw(runs, t, s, c, rule, n, m)))  # fmt: skip
    header = ["task", "model", "lens_prompts", "language", "layer", "n"] + [
        f"{q}_{s}" for q in QUANTITIES for s in ("mean", "lo", "hi")]
    section.tables = [Table("logit_lens.csv", header, csv_rows), Table("logit_lens_peaks.csv", PEAK_HEADER, peak_rows)]
    return section


def task_labels(runs: Runs, task: str) -> list[str]:
    """The task's label words (summary.json of the first run that has the task)."""
    for r in runs.runs:
        labels = ((r.summary.get("tasks") or {}).get(task) or {}).get("labels")
        if labels:
            return list(labels)
    return []


def peak(e: dict, q: str = "p_target") -> dict | None:
    """Where a language's mean `q` peaks (logit_lens.json's `<q>_peak`, or computed from its mean
    curve for files written before it was recorded)."""
    return e.get(f"{q}_peak") if f"{q}_peak" in e else curve_peak(arr((e.get(q) or {}).get("mean")))


def one_label(e: dict) -> bool | None:
    """True when every kept item has one gold label (None: not recorded, a file of an older alignlens)."""
    return e.get("one_label") if "one_label" in e else None


def flag_notes(runs: Runs, task: str, per: list[dict], rule: str) -> list[str]:
    """Languages with no kept item (and, under the token-set rule, the option that keeps them) and
    languages whose kept items all have one gold label, per run."""
    labels = task_labels(runs, task)
    empty, single = {}, {}
    for i, p in enumerate(per):
        for lang, e in p.items():
            if e.get("n") == 0 and e.get("n_dropped_overlap"):
                empty.setdefault(lang, []).append(runs.roles[i])
            elif one_label(e):
                j = next(k for k, c in enumerate(e.get("kept_gold_counts") or []) if c)
                single.setdefault((lang, labels[j] if j < len(labels) else f"label {j}"), []).append(runs.roles[i])
    both = len([p for p in per if p]) > 1
    out = []
    if empty:
        who = "; ".join(f"{l}" + (f" ({', '.join(r)})" if both else "") for l, r in empty.items())
        fix = (" `alignlens analyze --lens-overlap first-token` (drop an item only when the first tokens of its label's "
               "English and target-language sets are equal, as Wendler et al. 2024) keeps them." if rule == "token-set" else "")
        out.append(f"No item kept in {who}: every item's gold label has English and target-language token sets that "
                   f"overlap ({rule} rule).{fix}")
    if single:
        who = "; ".join(f"{l}" + (f" ({', '.join(r)})" if both else "") + f": all kept items '{lab}'"
                        for (l, lab), r in single.items())
        out.append(f"One gold label only among the kept items ({who}; the other labels' words overlap): these languages' "
                   "lens means are that label's alone, not the task's.")
    return out


def peak_lines(runs: Runs, task: str, per: list[dict], groups: list[Group]) -> list[str]:
    """Per run, where P(target) peaks in each shown language (value, layer, relative depth)."""
    shown = {i: langs for idxs, langs in groups for i in idxs}
    lines = []
    for i, p in enumerate(per):
        bits = []
        for lang in shown.get(i, []):
            e = p.get(lang)
            pk = peak(e) if e and e.get("n") != 0 else None
            if pk:
                bits.append(f"{lang} {pk['value']:.2f} at layer {pk['layer']} ({pk['relative_depth'] * 100:.0f}%)")
        if bits:
            who = f"{runs.roles[i]}: " if len([x for x in per if x]) > 1 else ""
            lines.append(f"   – {who}P(target-language gold label) peaks at: " + ", ".join(bits) + ".")
    return lines


PEAK_HEADER = ["task", "model", "lens_prompts", "language", "n", "n_dropped_overlap", "kept_gold_counts", "one_label",
               "p_target_peak_layer", "p_target_peak_value", "p_target_peak_relative_depth", "p_en_peak_layer",
               "p_en_peak_value", "p_en_peak_relative_depth"]


def _peak_rows(runs: Runs, task: str, per: list[dict], modes: list[str]) -> list[list]:
    """Rows of logit_lens_peaks.csv: per run and language its kept items by gold label and its peaks."""
    labels = task_labels(runs, task)
    rows = []
    for i, p in enumerate(per):
        for lang, e in p.items():
            counts = e.get("kept_gold_counts")
            named = " ".join(f"{labels[k] if k < len(labels) else k}:{c}" for k, c in enumerate(counts)) if counts else ""
            flag = one_label(e)
            row = [task, runs.roles[i], modes[i], lang, e.get("n", ""), e.get("n_dropped_overlap", ""), named,
                   "" if flag is None else ("yes" if flag else "no")]
            for q in ("p_target", "p_en"):
                pk = peak(e, q) if e.get("n") != 0 else None
                row += [pk["layer"], pk["value"], pk["relative_depth"]] if pk else ["", "", ""]
            rows.append(row)
    return rows


def _plan(runs: Runs, task: str, per: list[dict], modes: list[str]) -> tuple[list[Group], list[str]]:
    """Which runs share a page and for which languages, and notes for the pages (see the module docstring)."""
    have = [i for i, p in enumerate(per) if p]
    if len(have) < 2:
        note = [f"Only {runs.role_label(have[0])} has logit-lens results for {task}."] if runs.compare else []
        return [(have, order_languages(per[have[0]]))], note
    shared = order_languages([l for l in per[0] if l in per[1]])
    notes = []
    one_sided = {runs.roles[i]: [l for l in per[i] if l not in per[1 - i]] for i in (0, 1)}
    if any(one_sided.values()):
        notes.append("Languages in one run only, not shown: "
                     + "; ".join(f"{r}: {' '.join(ls)}" for r, ls in one_sided.items() if ls) + ".")  # fmt: skip
    if not shared:
        return [([i], order_languages(per[i])) for i in (0, 1)], notes
    if modes[0] != modes[1]:
        notes.append(f"The two runs ran the lens on different prompts ({runs.roles[0]}: {modes[0]}, {runs.roles[1]}: {modes[1]}), so "
                     "each is shown on its own page, not overlaid.")  # fmt: skip
        return [([0], shared), ([1], shared)], notes
    if runs.overlap.same_items(task, shared):
        return [([0, 1], shared)], notes
    notes.append("The two runs evaluated different items here; lens values are saved as means over each run's own "
                 "items, so they cannot be restricted to the shared items: each run is shown on its own page, not overlaid.")  # fmt: skip
    return [([0], shared), ([1], shared)], notes


def _csv_rows(runs: Runs, task: str, per: list[dict], modes: list[str]) -> list[list]:
    """Rows of logit_lens.csv for one task (intervals of probabilities clipped to [0, 1], entropy's at 0;
    NaN for the all-label sums of files written before they existed)."""
    rows = []
    for i, p in enumerate(per):
        for l, e in p.items():
            series = {q: {s: arr((e.get(q) or {}).get(s)) for s in ("mean", "lo", "hi")} for q in QUANTITIES}
            for q in QUANTITIES:
                for s in ("lo", "hi"):
                    series[q][s] = np.clip(series[q][s], 0.0, 1.0 if q != "entropy_bits" else None)
            for layer in range(len(series["p_en"]["mean"])):
                rows.append([task, runs.roles[i], modes[i], l, layer, e.get("n", "")] + [
                    series[q][s][layer] if layer < len(series[q][s]) else math.nan
                    for q in QUANTITIES for s in ("mean", "lo", "hi")])  # fmt: skip
    return rows


def no_items_text(e: dict, rule: str) -> str:
    """Why a lens panel has no items (n = 0), and under the token-set rule what keeps them."""
    dropped = e.get("n_dropped_overlap") or 0
    if dropped:
        return (f"no items: all {dropped} items' gold labels\nhave overlapping English and target\n"
                f"words ({rule} rule), so none is kept"
                + ("\n(--lens-overlap first-token keeps them)" if rule == "token-set" else ""))
    return "no items"


def _strip(runs: Runs, strip, rows: list[np.ndarray], ent_max: float):
    """Entropy strip under a lens panel: one row per run, each on its own layer positions."""
    im = None
    for ri, r in enumerate(rows):
        if not len(r):
            continue
        xs = runs.layer_x(len(r))
        step = xs[1] - xs[0] if len(xs) > 1 else 1.0
        im = strip.imshow(r[None, :], aspect="auto", cmap="viridis", vmin=0, vmax=ent_max, interpolation="nearest",
                          extent=(xs[0] - step / 2, xs[-1] + step / 2, ri + 0.5, ri - 0.5))  # fmt: skip
    strip.set_ylim(len(rows) - 0.5, -0.5)
    return im


def _panel(runs: Runs, ax, strip, l: str, series: list[tuple[int, dict]], rule: str, ent_max: float):
    """One language's lens panel (curves of every run in `series`) and its entropy strip.
    Returns (the strip's image or None, the largest x drawn)."""
    ent_rows, ns, empty, flags = [], [], [], []
    x_max = 0.0
    for i, p in series:
        e = p.get(l)
        if e is None:
            continue
        ns.append(f"{e.get('n', '?')}")
        if e.get("n") == 0:
            empty.append((f"{runs.roles[i]}: " if len(series) > 1 else "") + no_items_text(e, rule))
        for q in ("p_en_all", "p_target_all", "p_en", "p_target"):
            if q not in e:  # all-label sums: not in files written before they existed
                continue
            m, lo, hi = (arr(e[q][s]) for s in ("mean", "lo", "hi"))
            xs = runs.layer_x(len(m))
            x_max = max(x_max, float(xs[-1]) if len(xs) else 0.0)
            gold = q in ("p_en", "p_target")
            ax.plot(xs, m, color=COLORS[q], ls=LINESTYLE[runs.style(i)], lw=1.2 if gold else 0.9)
            if gold and len(lo) == len(m) and len(hi) == len(m):
                ax.fill_between(xs, np.clip(lo, 0, 1), np.clip(hi, 0, 1), color=COLORS[q], alpha=0.12, lw=0)
        pk = peak(e) if e.get("n") != 0 else None
        if pk and pk["layer"] < len(runs.layer_x(len(arr(e["p_target"]["mean"])))):
            ax.plot([runs.layer_x(len(arr(e["p_target"]["mean"])))[pk["layer"]]], [pk["value"]], "v",
                    color=COLORS["p_target"], ms=4.5, zorder=4)
        if one_label(e):
            flags.append("one label")
        ent_rows.append(arr(e["entropy_bits"]["mean"]))
    if empty:
        ax.text(0.5, 0.5, "\n".join(empty), transform=ax.transAxes, ha="center", va="center", fontsize=6.5,
                color="#444444", bbox={"facecolor": "white", "edgecolor": "#bbbbbb", "alpha": 0.9})  # fmt: skip
    flag = f", {flags[0]}" if flags else ""
    ax.set_title(f"{lang_label(l)}{' *' if l in runs.trained else ''}  (n={'/'.join(ns)}{flag})", fontsize=8.5, pad=3)
    return _strip(runs, strip, ent_rows, ent_max), x_max


def _draw(runs: Runs, title: str, series: list[tuple[int, dict]], langs: list[str], rule: str, note: str = "",
          mode: str = "english-labels"):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = new_fig(title, "Logit lens " + PROMPTS_TEXT[mode] + ": probability of the gold label's English token set "
                  "(purple, the paper's latent) and of its target-language token set (green, out) after final norm + "
                  "unembedding at each layer (mean over items with 95% interval); ▼: where P(target) peaks; light thin lines: "
                  "the same summed over every label's set. 'one label': every kept item has the same gold label (its "
                  "mean is that label's). Strip below each panel: mean next-token entropy (bits) per layer"
                  + (f", rows = {' / '.join(runs.roles)}." if len(series) > 1 else ".") + (f" {note}" if note else ""))  # fmt: skip
    n = len(langs)
    ncols = 5 if n > 8 else min(max(n, 1), 4)
    nrows = math.ceil(n / ncols)
    outer = fig.add_gridspec(nrows, ncols, left=0.05, right=0.93, top=top(fig, 0.83), bottom=0.1, hspace=0.55, wspace=0.25)
    ent = [arr(e["entropy_bits"]["mean"]) for _, p in series for e in p.values()]
    ent_max = max([float(np.nanmax(m)) for m in ent if np.isfinite(m).any()] or [1.0]) or 1.0
    im = None
    for k, l in enumerate(langs):
        sub = outer[k // ncols, k % ncols].subgridspec(2, 1, height_ratios=[5, 1], hspace=0.08)
        ax = fig.add_subplot(sub[0])
        strip = fig.add_subplot(sub[1], sharex=ax)
        panel_im, x_max = _panel(runs, ax, strip, l, series, rule, ent_max)
        im = panel_im or im
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=6.5, labelbottom=False, labelleft=(k % ncols == 0))
        ax.grid(alpha=0.25)
        strip.set_yticks([])
        strip.tick_params(labelsize=6.5)
        if not runs.depth_axis:
            int_layers(strip)
        if k // ncols == nrows - 1 or k + ncols >= n:
            strip.set_xlabel("relative depth" if runs.depth_axis else "layer", fontsize=7)
        if x_max:
            pad = 0.03 if runs.depth_axis else 0.5
            ax.set_xlim(-pad, x_max + pad)
    handles = [Line2D([], [], color=COLORS["p_en"], lw=1.5, label="P(English label)"),
               Line2D([], [], color=COLORS["p_target"], lw=1.5, label="P(target-language label)"),
               Line2D([], [], color=COLORS["p_en_all"], lw=1.0, label="any English label"),
               Line2D([], [], color=COLORS["p_target_all"], lw=1.0, label="any target label"),
               Patch(color="#cccccc", alpha=0.6, label="95% interval")]  # fmt: skip
    handles += [Line2D([], [], color="#333333", ls=LINESTYLE[runs.style(i)], label=runs.role_label(i)) for i, _ in series]
    fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.02))
    if im is not None:
        cax = fig.add_axes([0.945, 0.1, 0.01, 0.3])
        fig.colorbar(im, cax=cax).set_label("entropy (bits)", fontsize=7)
        cax.tick_params(labelsize=6.5)
    return fig


def averaged_languages(series: list[tuple[int, dict]], langs: list[str], english: str = "en") -> tuple[list[str], list[str]]:
    """(languages averaged, languages left out): the non-English `langs` with kept items (n > 0) in
    every run of `series`, so that both runs average the same languages."""
    non_en = [l for l in langs if l != english]
    use = [l for l in non_en if all((p.get(l) or {}).get("n") for _, p in series)]
    return use, [l for l in non_en if l not in use]


def language_average(entries: list[dict], q: str, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per layer (mean, lo, hi) of quantity `q` over languages: the mean of the per-language means
    (each language weighted equally, whatever its number of kept items) with a Student-t interval
    across languages (n = number of languages; it collapses to the mean for one language)."""
    rows = np.array([arr(e[q]["mean"]) for e in entries], dtype=float)
    if rows.ndim != 2 or not len(rows):
        nan = np.full(rows.shape[-1] if rows.ndim == 2 else 0, np.nan)
        return nan, nan.copy(), nan.copy()
    return mean_ci(rows, confidence=confidence, axis=0)


def _draw_average(runs: Runs, title: str, series: list[tuple[int, dict]], langs: list[str], mode: str, note: str = ""):
    """The paper's figure: latent vs out (left) and the all-label sums (right) over relative depth,
    language means over the non-English languages, run a vs run b, entropy strips below."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    use, left_out = averaged_languages(series, langs)
    sums = all(q in p[l] for _, p in series for l in use for q in ("p_en_all", "p_target_all"))
    text = (f"Logit lens {PROMPTS_TEXT[mode]}, as the paper's figure: mean over the {len(use)} non-English languages with "
            f"kept items{' in both runs' if len(series) > 1 else ''} ({' '.join(use) or 'none'}), each language weighted "
            "equally (the mean of its per-item means); band: 95% Student-t interval across languages (how much languages "
            "differ, not item noise). x: relative depth, layer / (layers − 1). Strip below: mean next-token entropy (bits)"
            + (f", rows = {' / '.join(runs.roles)}." if len(series) > 1 else ".")
            + (f" Left out (no kept item): {' '.join(left_out)}." if left_out else "")
            + ("" if sums else " All-label sums: not in this logit_lens.json (written before they existed).")
            + (f" {note}" if note else ""))  # fmt: skip
    fig = new_fig(title, text)
    outer = fig.add_gridspec(1, 2, left=0.07, right=0.9, top=top(fig, 0.8), bottom=0.2, wspace=0.18)
    panels = [("gold label", ("p_en", "p_target")), ("all labels", ("p_en_all", "p_target_all"))]
    ent_rows = []
    for _, p in series:
        ent_rows.append(language_average([p[l] for l in use], "entropy_bits")[0] if use else np.array([]))
    finite = [float(np.nanmax(r)) for r in ent_rows if len(r) and np.isfinite(r).any()]
    ent_max = max(finite or [1.0]) or 1.0
    im = None
    for k, (name, qs) in enumerate(panels):
        sub = outer[0, k].subgridspec(2, 1, height_ratios=[6, 1], hspace=0.08)
        ax = fig.add_subplot(sub[0])
        strip = fig.add_subplot(sub[1], sharex=ax)
        for i, p in series:
            for q in qs:
                if not use or not all(q in p[l] for l in use):
                    continue
                m, lo, hi = language_average([p[l] for l in use], q)
                xs = np.arange(len(m)) / max(len(m) - 1, 1)
                ax.plot(xs, m, color=COLORS[q], ls=LINESTYLE[runs.style(i)], lw=1.6)
                ax.fill_between(xs, np.clip(lo, 0, 1), np.clip(hi, 0, 1), color=COLORS[q], alpha=0.15, lw=0)
        if not use:
            ax.text(0.5, 0.5, "no non-English language with kept items", transform=ax.transAxes, ha="center",
                    va="center", fontsize=8, color="#444444")  # fmt: skip
        elif name == "all labels" and not sums:
            ax.text(0.5, 0.5, "all-label sums not recorded\n(logit_lens.json of an older alignlens)",
                    transform=ax.transAxes, ha="center", va="center", fontsize=8, color="#444444")  # fmt: skip
        for ri, r in enumerate(ent_rows):
            if len(r):
                xs = np.arange(len(r)) / max(len(r) - 1, 1)
                step = xs[1] - xs[0] if len(xs) > 1 else 1.0
                im = strip.imshow(r[None, :], aspect="auto", cmap="viridis", vmin=0, vmax=ent_max, interpolation="nearest",
                                  extent=(xs[0] - step / 2, xs[-1] + step / 2, ri + 0.5, ri - 0.5))  # fmt: skip
        strip.set_ylim(len(ent_rows) - 0.5, -0.5)
        strip.set_yticks(range(len(ent_rows)))
        strip.set_yticklabels([runs.roles[i] for i, _ in series], fontsize=7)
        strip.set_xlabel("relative depth", fontsize=8)
        strip.tick_params(labelsize=7)
        ax.set_title(f"{name}: latent (English) vs out (target language)", fontsize=9.5, pad=4)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(-0.03, 1.03)
        ax.tick_params(labelsize=7, labelbottom=False)
        ax.set_ylabel("probability" if k == 0 else "", fontsize=8)
        ax.grid(alpha=0.25)
    handles = [Line2D([], [], color=COLORS[q], lw=1.6, label=NAMES[q]) for q in PROBABILITIES]
    handles += [Patch(color="#cccccc", alpha=0.6, label="95% interval across languages")]
    handles += [Line2D([], [], color="#333333", ls=LINESTYLE[runs.style(i)], label=runs.role_label(i)) for i, _ in series]
    fig.legend(handles=handles, loc="lower center", ncols=4, fontsize=7.5, frameon=False, bbox_to_anchor=(0.5, 0.035))
    if im is not None:
        cax = fig.add_axes([0.92, 0.2, 0.01, 0.12])
        fig.colorbar(im, cax=cax).set_label("entropy (bits)", fontsize=7)
        cax.tick_params(labelsize=6.5)
    return fig


def _peak(e: dict, q: str) -> tuple[float, int]:
    m = arr(e[q]["mean"])
    if not np.isfinite(m).any():
        return math.nan, -1
    i = int(np.nanargmax(m))
    return float(m[i]), i


def _summary_line(runs: Runs, task: str, per: list[dict], groups: list[Group], modes: list[str]) -> str | None:
    """Each run's mean peak of P(English label) and last-layer P(target), over the non-English
    languages shown on the pages (the shared ones when both runs have the task), and the prompts."""
    bits = []
    shown = {i: langs for idxs, langs in groups for i in idxs}
    for i, p in enumerate(per):
        non_en = [p[l] for l in shown.get(i, []) if l in p and l != "en" and p[l].get("n") != 0]
        peaks = [(v, li, len(arr(e["p_en"]["mean"]))) for (v, li), e in ((_peak(e, "p_en"), e) for e in non_en) if li >= 0]
        finals = [f for f in (arr(e["p_target"]["mean"])[-1] for e in non_en if len(e["p_target"]["mean"])) if np.isfinite(f)]
        if not peaks:
            continue
        rel = np.mean([li / max(L - 1, 1) for _, li, L in peaks])
        bits.append(f"{runs.roles[i]}: English-label probability peaks at {np.mean([v for v, _, _ in peaks]):.2f} on average "
                    f"(at {rel * 100:.0f}% depth), target-language label at the last layer {np.mean(finals) if finals else math.nan:.2f}")  # fmt: skip
    if not bits:
        return None
    own = " (each run on its own items or prompts, not compared)" if len(bits) > 1 and not any(len(ix) > 1 for ix, _ in groups) else ""
    shown = sorted({modes[i] for i, p in enumerate(per) if p})
    on = " and ".join({"target-labels": "target-label prompts", "english-labels": "English-label prompts"}[m] for m in shown)
    caveat = " (P(target) is near 0 there by construction)" if "english-labels" in shown else ""
    return f"• Logit lens, {task} (non-English languages, on {on}{caveat}){own}: " + "; ".join(bits) + "."
