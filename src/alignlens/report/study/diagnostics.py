"""Section 7, label shares and collapse: per run (base model, each arm and seed) and language the share
of the most-predicted label (answers collapsed onto one label flagged at the study's threshold,
0.95), and the calibrated accuracy (contextual calibration), which a collapsed run can keep when its
probabilities still rank the items."""

from __future__ import annotations

import numpy as np

from alignlens.report.languages import lang_label
from alignlens.report.layout import Page, Section, Table, new_fig, top
from alignlens.report.study.doc import paged, arm_names, sections, slug, title_suffix

SECTION = "Label shares and collapse"
RUNS_PER_PANEL = 22
TOGETHER = 10  # up to this many runs: label shares and calibrated accuracy on one page
COLLAPSED = "#1f3fbf"  # outline of a collapsed run × language cell


def run_order(doc: dict, sec: dict) -> list[str]:
    """Base model(s) first, then each arm's seeds in the study file's order."""
    names = list(sec.get("runs", {}))
    order = {a: i for i, a in enumerate(arm_names(doc))}

    def key(r: str):
        if r == "base" or r.startswith("base/"):
            return (0, r, 0)
        arm, _, seed = r.rpartition("/seed")
        return (1 + order.get(arm, len(order)), arm, int(seed) if seed.isdigit() else 0)
    return sorted(names, key=key)


def short_labels(labels: list[str]) -> dict[str, str]:
    """The shortest distinct prefixes of the labels ('p', 'n'; 'e', 'n', 'c')."""
    for k in range(1, max(len(x) for x in labels) + 1):
        got = {x: x[:k] for x in labels}
        if len(set(got.values())) == len(labels):
            return got
    return {x: x for x in labels}


def _majority(m: dict) -> tuple[str | None, float | None]:
    shares = m.get("label_shares") or {}
    if not shares:
        return None, m.get("majority_share")
    label = max(shares, key=lambda k: shares[k])
    return label, m.get("majority_share", shares[label])


def _panel(fig, rect, sec: dict, runs: list[str], langs: list[str], what: str, threshold: float) -> None:
    from matplotlib.patches import Rectangle

    short = short_labels(list(sec["labels"]))
    ax = fig.add_axes(rect)
    if what == "shares":
        M = np.array([[(_majority(sec["runs"][r].get(x, {}))[1] if x in sec["runs"][r] else None) or np.nan for x in langs]
                      for r in runs], dtype=float)
        im = ax.imshow(np.ma.masked_invalid(M), cmap="Oranges", vmin=1 / len(sec["labels"]), vmax=1.0, aspect="auto")
    else:
        M = np.array([[_cal(sec["runs"][r].get(x)) for x in langs] for r in runs], dtype=float)
        im = ax.imshow(np.ma.masked_invalid(M), cmap="Greens", vmin=1 / len(sec["labels"]), vmax=1.0, aspect="auto")
    ax.set_facecolor("#e6e6e6")
    fs = 6.5 if len(langs) <= 12 else 5.6 if len(langs) <= 16 else 5.0
    if len(runs) > 14:
        fs = min(fs, 5.4)
    for i, r in enumerate(runs):
        for j, x in enumerate(langs):
            m = sec["runs"][r].get(x)
            if not m or not np.isfinite(M[i, j]):
                continue
            if what == "shares":
                label, share = _majority(m)
                flag = share is not None and share >= threshold
                ax.text(j, i, f"{share * 100:.0f} {short.get(label, '?')}", ha="center", va="center", fontsize=fs,
                        fontweight="bold" if flag else "normal", color="white" if share > 0.85 else "black")
                if flag:
                    ax.add_patch(Rectangle((j - 0.45, i - 0.4), 0.9, 0.8, fill=False, edgecolor=COLLAPSED, lw=1.8))
            else:
                chance = 1 / len(sec["labels"])
                ax.text(j, i, f"{M[i, j] * 100:.0f}", ha="center", va="center", fontsize=fs,
                        color="white" if (M[i, j] - chance) / (1 - chance) > 0.65 else "black")
    ax.set_xticks(range(len(langs)))
    ax.set_xticklabels([lang_label(x) for x in langs], fontsize=6.8, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(runs)))
    ax.set_yticklabels(runs, fontsize=7 if len(runs) <= 14 else 6)
    ax.tick_params(length=0)
    cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.015)
    cb.set_label("majority-label share" if what == "shares" else "calibrated accuracy", fontsize=7.5)
    cb.ax.tick_params(labelsize=7)


def _cal(m: dict | None) -> float:
    v = (m or {}).get("calibrated_accuracy")
    return np.nan if v is None else float(v)


def share_pages(doc: dict, task: str, sec: dict, variant: str, section: str = SECTION) -> list[Page]:
    runs = run_order(doc, sec)
    if not runs:
        return []
    langs = list(sec["languages"])
    diag = sec.get("diagnostics") or {}
    threshold = float(diag.get("collapse_threshold", 0.95))
    collapsed = diag.get("collapsed") or []
    short = short_labels(list(sec["labels"]))
    key = ", ".join(f"{v} = {k}" for k, v in short.items())
    n_cells = sum(len(v) for v in sec["runs"].values())
    by_run: dict[str, int] = {}
    for c in collapsed:
        by_run[c["run"]] = by_run.get(c["run"], 0) + 1
    worst = ", ".join(f"{r} {n}" for r, n in sorted(by_run.items(), key=lambda kv: -kv[1])[:6])
    sub_shares = (f"Share of the answers that went to the most-predicted label (%), with that label ({key}), per run and "
                  f"language, on all of the run's items there. Outlined in blue and bold: collapsed (share ≥ {threshold:.0%}): "
                  f"{len(collapsed)} of {n_cells} run × language cells" + (f" (by run: {worst})" if collapsed else "") +
                  ". A collapsed run's accuracy is near the gold share of that label whatever it knows; AUC and calibrated "
                  "accuracy, which rank or re-weigh its probabilities, can still show what it knows.")
    sub_cal = ("Calibrated accuracy (%) per run and language: the answers after contextual calibration (Zhao et al. 2021: "
               "each label's probability divided by its probability on the run's content-free prompts), which removes a "
               "run's constant preference for one label; white: chance (1 / number of labels) or below. Grey: not available (no "
               "content-free probabilities).")
    if len(runs) <= TOGETHER:
        title = f"Label shares and calibrated accuracy{title_suffix(task, variant)}"

        def draw_both():
            fig = new_fig(title, f"Top: {sub_shares} Bottom: {sub_cal}")
            t = top(fig, 0.86) + 0.01
            h = min((t - 0.2) / 2 - 0.06, 0.04 + 0.032 * len(runs))
            _panel(fig, [0.14, t - h, 0.82, h], sec, runs, langs, "shares", threshold)
            _panel(fig, [0.14, t - 2 * h - 0.13, 0.82, h], sec, runs, langs, "cal", threshold)
            return fig
        return [Page(section, title, slug("shares", task, variant), draw_both)]
    chunks = [runs[i:i + RUNS_PER_PANEL] for i in range(0, len(runs), RUNS_PER_PANEL)]
    pages = []
    for what, name, sub in (("shares", "Label shares", sub_shares), ("cal", "Calibrated accuracy", sub_cal)):
        def draw(fig, chunk, what=what):
            t = top(fig, 0.86) + 0.01
            h = min(t - 0.16, 0.04 + 0.032 * len(chunk))
            _panel(fig, [0.14, t - h, 0.82, h], sec, chunk, langs, what, threshold)
        pages += paged(section, name, what, task, variant, chunks, sub, draw)
    return pages


def csv_rows(doc: dict, sec: dict) -> tuple[list[str], list[list]]:
    labels = list(sec["labels"])
    threshold = float((sec.get("diagnostics") or {}).get("collapse_threshold", 0.95))
    header = ["run", "lang", "n", "accuracy", "balanced_accuracy", "auc", "calibrated_accuracy",
              *[f"share_{x}" for x in labels], "majority_label", "majority_share", "collapsed"]
    out = []
    for r in run_order(doc, sec):
        for x in sec["languages"]:
            m = sec["runs"][r].get(x)
            if m is None:
                continue
            shares = m.get("label_shares") or {}
            label, share = _majority(m)
            out.append([r, x, m.get("n", ""), *["" if m.get(k) is None else m[k] for k in
                                                ("accuracy", "balanced_accuracy", "auc", "calibrated_accuracy")],
                        *["" if shares.get(lab) is None else shares[lab] for lab in labels], label or "",
                        "" if share is None else share, "yes" if share is not None and share >= threshold else "no"])
    return header, out


def task_section(doc: dict, variant: str, section: str = SECTION) -> Section:
    out = Section()
    for task, sec in sections(doc, variant):
        out.pages += share_pages(doc, task, sec, variant, section)
        header, rows = csv_rows(doc, sec)
        out.tables.append(Table(f"study_runs_{slug(task, variant if variant != 'standard' else '')}.csv", header, rows))
    return out


def build(doc: dict) -> Section:
    return task_section(doc, "standard")
