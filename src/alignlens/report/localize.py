"""The "Causal localisation" report of `alignlens localize`, built from localize.json only.

Pages: a summary in words (`summary_lines`: per task and patching direction, the layers and sites
whose recovery interval excludes 0 where the gap is significant, or that the gap is too small to
localise, or plainly that nothing is significant; the steering and dose results), then per task and
direction the recovery curves per layer (one panel per positions x site: the group "all" with its
95% interval band, the other groups and languages as thin lines, each only where its gap is
significant; when no gap is, the panels say the gap is too small to localise), the steering Δ against the base with its controls, and the α curve of the
weight-scale dose response. Tables (CSV): recovery.csv, steering.csv, dose.csv.

`render_localize(localize_json, pdf)` writes the PDF with `<stem>_figures/` and `<stem>_tables/`
beside it, swapped into place only when all succeeded (`results.writer.staged_swap`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from alignlens import AlignlensError, __version__
from alignlens.report.layout import Page, Section, Table, int_layers, new_fig, short_path, short_paths, top
from alignlens.report.summary import contents_page, summary_pages
from alignlens.report.verdicts import excludes0
from alignlens.results.schema import read_localize_file

SECTION = "Causal localisation"
GROUP_ORDER = ("all", "trained", "untrained", "high-resource", "low-resource")
SITE_COLOR = {"resid": "#4C72B0", "attn": "#DD8452", "mlp": "#55A868"}
KIND_COLOR = {"alignment": "#C44E52", "control": "#8172B3", "random": "#999999"}


def _num(x, digits: int = 2, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(c, digits: int = 2) -> str:
    return "[—]" if not c else f"[{_num(c[0], digits)}, {_num(c[1], digits)}]"


def _ranges(layers: list[int]) -> str:
    """[1, 2, 3, 6] -> '1–3, 6'."""
    out, run = [], []
    for x in sorted(layers):
        if run and x == run[-1] + 1:
            run.append(x)
            continue
        if run:
            out.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [x]
    if run:
        out.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def _recovery_cells(doc: dict, task: str, direction: str, group: str = "all") -> list[dict]:
    return [r for r in doc["patching"]["recovery"] if r["task"] == task and r["direction"] == direction
            and r["scope"] == "group" and r["name"] == group]


# ---- the summary in words --------------------------------------------------------------------------


def _significant(cells: list[dict]) -> dict[tuple[str, str], list[int]]:
    """{(positions, site): layers} whose recovery interval lies above 0."""
    sig: dict[tuple[str, str], list[int]] = {}
    for r in cells:
        if r["recovery_ci95"] and r["recovery_ci95"][0] > 0:
            sig.setdefault((r["positions"], r["site"]), []).append(int(r["layer"]))
    return sig


def _where(sig: dict[tuple[str, str], list[int]]) -> str:
    """'resid layers 1–2 (last, all positions); attn layer 0 (last positions)'."""
    by: dict[tuple[str, str], list[str]] = {}
    for (pos, site), ls in sig.items():
        by.setdefault((site, f"layer{'s' if len(ls) > 1 else ''} {_ranges(ls)}"), []).append(pos)
    return "; ".join(f"{site} {layers} ({', '.join(pos)} positions)" for (site, layers), pos in by.items())


def patching_lines(doc: dict) -> list[str]:
    """Per task and direction: for the group "all", the gap and where recovery is significant (its
    95% interval lies above 0), or that the gap is too small to localise; then each other group and
    language whose gap is significant."""
    lines = []
    any_significant = False
    for task in doc["tasks"]:
        for d, roles in doc["patching"]["directions"].items():
            cells = _recovery_cells(doc, task, d)
            if not cells:
                continue
            head = f"• {task}, {d} ({roles['source']} → {roles['receiver']}):"
            c0 = cells[0]
            gap = f"gap {_num(c0['gap'])} log-odds {_ci(c0['gap_ci95'])}"
            if c0["status"] == "no items":
                lines.append(f"{head} no items.")
            elif c0["status"] != "ok":
                lines.append(f"{head} in all languages together the gap is too small to localise ({gap}, MDE80 "
                             f"{_num(c0['gap_mde80'])}); no recovery is reported.")
            else:
                sig = _significant(cells)
                if not sig:
                    lines.append(f"{head} {gap}; no site's recovery is significant (every interval includes 0).")
                else:
                    any_significant = True
                    best = max((r for r in cells if r["recovery"] is not None), key=lambda r: r["recovery"])
                    lines.append(f"{head} {gap}; recovery significantly above 0 at: {_where(sig)}. Largest: R = "
                                 f"{_num(best['recovery'])} {_ci(best['recovery_ci95'])} ({best['site']}, layer "
                                 f"{best['layer']}, {best['positions']}).")
            scopes = dict.fromkeys((r["scope"], r["name"]) for r in doc["patching"]["recovery"]
                                   if r["task"] == task and r["direction"] == d and r["status"] == "ok"
                                   and (r["scope"], r["name"]) != ("group", "all"))
            for scope, name in scopes:
                rows = [r for r in doc["patching"]["recovery"] if r["task"] == task and r["direction"] == d
                        and (r["scope"], r["name"]) == (scope, name)]
                sig = _significant(rows)
                any_significant = any_significant or bool(sig)
                what = f"{'group ' if scope == 'group' else ''}{name}: gap {_num(rows[0]['gap'])} {_ci(rows[0]['gap_ci95'])}"
                lines.append(f"  – {what}; " + (f"recovery significant at {_where(sig)}." if sig else
                                                "no site's recovery is significant."))
    if lines and not any_significant:
        lines.append("• Nothing is localised: no site's recovery is significant where the gap is.")
    return lines


def _group(summary: dict, task: str, group: str = "all") -> dict | None:
    return ((summary or {}).get(task) or {}).get("groups", {}).get(group)


def steering_lines(doc: dict) -> list[str]:
    st = doc.get("steering") or {}
    if "skipped" in st:
        return [f"• Steering: {short_paths(st['skipped'])}."]
    lines = []
    for task in doc["tasks"]:
        moved, prior = [], []
        for c in st.get("conditions", []):
            if c["direction_kind"] != "alignment":
                continue
            g = _group(c["vs"].get("base"), task)
            if g is None:
                continue
            acc = g["accuracy"]
            tag = f"layer {c['layer']}, s = {c['scale']:g}: Δacc {_num(acc.get('delta'), 3, True)} {_ci(acc.get('ci95'), 3)}"
            controls = []
            for name, eff in c["vs"].items():
                if name == "base":
                    continue
                gc = _group(eff, task)
                if gc is not None:
                    controls.append(f"vs {name} {_num(gc['accuracy'].get('delta'), 3, True)}"
                                    f"{'*' if excludes0(gc['accuracy'].get('ci95')) else ''}")
            if controls:
                tag += " (" + ", ".join(controls) + ")"
            if g.get("accuracy_moved"):
                moved.append(tag)
            if g.get("prior_only"):
                prior.append(f"layer {c['layer']}, s = {c['scale']:g}")
        if moved:
            lines.append(f"• Steering {task} with the alignment direction moves accuracy (all languages, 95% interval "
                         f"excludes 0) at: " + "; ".join(moved) + " (* a control differs significantly).")
        else:
            lines.append(f"• Steering {task} with the alignment direction moves accuracy significantly at no layer "
                         "and scale tried.")
        if prior:
            lines.append(f"  – It moves only the label prior (a label share shifts, AUC does not) at: {'; '.join(prior)}.")
    return lines


def dose_lines(doc: dict) -> list[str]:
    dose = doc.get("dose") or {}
    if "skipped" in dose:
        return [f"• Dose response: {short_paths(dose['skipped'])}."]
    lines = []
    for task in doc["tasks"]:
        parts = []
        for key, e in dose.get("by_alpha", {}).items():
            g = _group(e.get("vs_base"), task)
            if g is None:
                continue
            acc = g["accuracy"]
            parts.append(f"α = {key}: {_num(acc.get('delta'), 3, True)}{'*' if excludes0(acc.get('ci95')) else ''}")
        if parts:
            lines.append(f"• Dose response {task} (W + α·ΔW, Δaccuracy vs α = 0, all languages; * interval excludes 0): "
                         + ", ".join(parts) + ".")
    return lines


def summary_lines(doc: dict) -> list[str]:
    models = doc["models"]
    head = [f"• Models: base {short_path(models['base'])}, aligned {short_path(models['aligned'])}"
            + (f", copy control {short_path(models['control'])}" if models.get("control") else "") + ". "
            + "; ".join(f"{t}: {len(langs)} languages" for t, langs in doc["tasks"].items())
            + f". Recovery R = mean(patched − receiver) / mean(source − receiver) of the gold-vs-other log-odds, with "
            f"label-stratified item-cluster bootstrap 95% intervals ({doc['options']['bootstrap_resamples']} resamples); "
            "reported only where the gap's interval excludes 0."]
    return head + patching_lines(doc) + steering_lines(doc) + dose_lines(doc)


# ---- pages ---------------------------------------------------------------------------------------


def _recovery_page(doc: dict, task: str, direction: str) -> Page:
    """One panel per positions x site: the recovery curve per layer of group "all" (95% interval
    band) and thin curves of the other groups and languages, each only where its gap is significant."""
    roles = doc["patching"]["directions"][direction]
    positions, sites = doc["patching"]["positions"], doc["patching"]["sites"]
    scopes: dict[tuple[str, str], list[dict]] = {}
    for r in doc["patching"]["recovery"]:
        if r["task"] == task and r["direction"] == direction:
            scopes.setdefault((r["scope"], r["name"]), []).append(r)
    main = scopes.get(("group", "all"), [])
    shown = {k: v for k, v in scopes.items() if v and v[0]["status"] == "ok"}
    sub = (f"{roles['source']} → {roles['receiver']}: the receiver's residual stream / attention / MLP output at one "
           "layer replaced by the source's; recovery per layer where the gap is significant (group all with its 95% "
           "interval band; other groups and languages thin). ")
    if main:
        g = main[0]
        sub += (f"Gap (all languages) {_num(g['gap'])} log-odds {_ci(g['gap_ci95'])}, MDE80 {_num(g['gap_mde80'])}"
                + ("" if g["status"] == "ok" else ": too small to localise") + ".")

    def draw():
        fig = new_fig(f"Recovery per layer — {task}, {direction}", sub)
        t = top(fig, 0.84)
        axes = fig.subplots(len(positions), len(sites), squeeze=False,
                            gridspec_kw={"top": t, "bottom": 0.08, "left": 0.07, "right": 0.98, "hspace": 0.45})
        for i, pos in enumerate(positions):
            for j, site in enumerate(sites):
                ax = axes[i][j]
                ax.set_title(f"{site}, {pos} positions", fontsize=9)
                if not shown:
                    ax.text(0.5, 0.5, "gap too small to localise", ha="center", va="center", fontsize=9,
                            transform=ax.transAxes)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    continue
                for (scope, name), rows in shown.items():
                    rs = sorted((r for r in rows if r["site"] == site and r["positions"] == pos), key=lambda r: r["layer"])
                    xs = [r["layer"] for r in rs]
                    if (scope, name) == ("group", "all"):
                        color = SITE_COLOR.get(site, "black")
                        ax.plot(xs, [r["recovery"] for r in rs], "o-", color=color, ms=3, lw=1.8, label="all")
                        ax.fill_between(xs, [r["recovery_ci95"][0] if r["recovery_ci95"] else math.nan for r in rs],
                                        [r["recovery_ci95"][1] if r["recovery_ci95"] else math.nan for r in rs],
                                        color=color, alpha=0.18, lw=0)
                    else:
                        line, = ax.plot(xs, [r["recovery"] for r in rs], lw=0.9, alpha=0.8,
                                        ls="-" if scope == "group" else "--", label=name)
                        if len(shown) == 1:  # the only curve: its interval too
                            ax.fill_between(xs, [r["recovery_ci95"][0] if r["recovery_ci95"] else math.nan for r in rs],
                                            [r["recovery_ci95"][1] if r["recovery_ci95"] else math.nan for r in rs],
                                            color=line.get_color(), alpha=0.15, lw=0)
                ax.axhline(0, color="#444444", lw=0.7)
                ax.axhline(1, color="#444444", lw=0.7, ls=":")
                int_layers(ax)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
                if i == len(positions) - 1:
                    ax.set_xlabel("layer", fontsize=8)
                if j == 0:
                    ax.set_ylabel("recovery", fontsize=8)
                if i == 0 and j == len(sites) - 1:
                    ax.legend(fontsize=6, loc="best")
        return fig

    return Page(SECTION, f"Recovery: {task}, {direction}", f"recovery_{task}_{direction}", draw)


def _panels(title: str, sub: str, n: int):
    """A page with `n` panels side by side below its subtitle: (figure, axes)."""
    fig = new_fig(title, sub)
    axes = fig.subplots(1, n, squeeze=False, gridspec_kw={"top": top(fig, 0.84), "bottom": 0.12, "left": 0.07,
                                                          "right": 0.98, "wspace": 0.22})[0]
    return fig, axes


def _steering_page(doc: dict, task: str) -> Page:
    st = doc["steering"]
    scales = st["scales"]
    sub = ("Δ accuracy (all languages, macro mean) of the base model steered by s·v at each layer, against the unsteered "
           "base, with item-cluster bootstrap 95% intervals: the alignment direction (aligned − base mean over training "
           "questions), the copy control's direction and random directions of the same norm.")

    def draw():
        fig, axes = _panels(f"Steering with the alignment direction — {task}", sub, len(scales))
        for ax, s in zip(axes, scales):
            kinds: dict[str, list] = {}
            seeds = sorted({c["direction_seed"] for c in st["conditions"] if c["direction_kind"] == "random"})
            for c in st["conditions"]:
                if c["scale"] != s:
                    continue
                g = _group(c["vs"].get("base"), task)
                if g is None:
                    continue
                kinds.setdefault(c["direction_kind"], []).append((c["layer"], c["direction_seed"], g["accuracy"]))
            offsets = {"alignment": -0.2, "control": -0.1}  # random directions side by side from 0 on
            for kind, pts in kinds.items():
                for n, (layer, seed, acc) in enumerate(sorted(pts, key=lambda p: (p[0], p[1] or 0))):
                    x = layer + (offsets[kind] if kind in offsets else 0.25 * seeds.index(seed) / max(1, len(seeds)))
                    ci = acc.get("ci95")
                    if acc.get("delta") is None:
                        continue
                    yerr = [[acc["delta"] - ci[0]], [ci[1] - acc["delta"]]] if ci else None
                    ax.errorbar([x], [acc["delta"]], yerr=yerr, fmt="o", color=KIND_COLOR.get(kind, "black"), ms=4,
                                capsize=2, lw=1, label=kind if n == 0 else None)
            ax.axhline(0, color="#444444", lw=0.7)
            ax.set_title(f"scale s = {s:g}", fontsize=9)
            ax.set_xlabel("layer (0 = embedding output)", fontsize=8)
            int_layers(ax)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("Δ accuracy vs base", fontsize=8)
        axes[0].legend(fontsize=7)
        return fig

    return Page(SECTION, f"Steering: {task}", f"steering_{task}", draw)


def _dose_page(doc: dict, task: str) -> Page:
    dose = doc["dose"]
    sub = ("The base model with W + α·ΔW (ΔW of the aligned model's LoRA adapter): macro accuracy and ROC-AUC per "
           "language group against α (α = 0 the base, α = 1 the aligned model); bars: the item-cluster bootstrap 95% "
           "interval of the all-languages Δ against α = 0.")

    def draw():
        fig, axes = _panels(f"Weight-scale dose response — {task}", sub, 2)
        alphas = dose["alphas"]
        for metric, ax in zip(("accuracy", "roc_auc"), axes):
            for g in doc["groups"]:
                ys = []
                for a in alphas:
                    e = dose["by_alpha"][f"{a:g}"]["metrics"].get(task, {}).get("groups", {}).get(g)
                    ys.append(math.nan if e is None or e.get(metric) is None else e[metric])
                if g == "all":  # drawn on top, with the paired interval of its Δ vs α = 0 around the α = 0 value
                    ax.plot(alphas, ys, "o-", ms=4, lw=2.0, color="black", label=g, zorder=5)
                    for a, y in zip(alphas, ys):
                        vs = _group(dose["by_alpha"][f"{a:g}"].get("vs_base"), task)
                        key = "accuracy" if metric == "accuracy" else "auc"
                        e = (vs or {}).get(key) or {}
                        if e.get("ci95") and e.get("delta") is not None and not math.isnan(y):
                            lo, hi = (y - e["delta"] + c for c in e["ci95"])
                            ax.errorbar([a], [y], yerr=[[y - lo], [hi - y]], fmt="none", color="black", capsize=3,
                                        lw=1, zorder=5)
                else:
                    ax.plot(alphas, ys, "o-", ms=3, lw=0.9, label=g)
            ax.axvline(0, color="#444444", lw=0.7)
            ax.axvline(1, color="#444444", lw=0.7, ls=":")
            ax.set_xlabel("α", fontsize=8)
            ax.set_ylabel(metric.replace("roc_auc", "ROC-AUC"), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        return fig

    return Page(SECTION, f"Dose response: {task}", f"dose_{task}", draw)


def tables(doc: dict) -> list[Table]:
    rec = Table("recovery.csv", ["task", "direction", "site", "layer", "positions", "scope", "name", "n_items", "gap",
                                 "gap_lo", "gap_hi", "gap_mde80", "status", "recovery", "recovery_lo", "recovery_hi"],
                [[r["task"], r["direction"], r["site"], r["layer"], r["positions"], r["scope"], r["name"], r["n_items"],
                  r["gap"], *(r["gap_ci95"] or [None, None]), r["gap_mde80"], r["status"], r["recovery"],
                  *(r["recovery_ci95"] or [None, None])] for r in doc["patching"]["recovery"]])
    out = [rec]
    st = doc.get("steering") or {}
    if "conditions" in st:
        rows = []
        for c in st["conditions"]:
            for vs, eff in c["vs"].items():
                for task, e in eff.items():
                    for g, ge in e["groups"].items():
                        acc = ge["accuracy"]
                        rows.append([task, c["direction_kind"], c["direction_seed"], c["layer"], c["scale"], vs, g,
                                     acc.get("delta"), *(acc.get("ci95") or [None, None]),
                                     (ge.get("auc") or {}).get("delta"), ge.get("prior_only")])
        out.append(Table("steering.csv", ["task", "direction", "seed", "layer", "scale", "versus", "group",
                                          "delta_accuracy", "lo", "hi", "delta_auc", "prior_only"], rows))
    dose = doc.get("dose") or {}
    if "by_alpha" in dose:
        rows = []
        for key, e in dose["by_alpha"].items():
            for task, m in e["metrics"].items():
                for g, ge in m["groups"].items():
                    vs = _group(e.get("vs_base"), task, g)
                    acc = (vs or {}).get("accuracy") or {}
                    rows.append([task, e["alpha"], g, ge.get("accuracy"), ge.get("roc_auc"), acc.get("delta"),
                                 *(acc.get("ci95") or [None, None])])
        out.append(Table("dose.csv", ["task", "alpha", "group", "accuracy", "roc_auc", "delta_vs_alpha0", "lo", "hi"], rows))
    return out


def build(doc: dict) -> Section:
    """The section's pages, tables and summary lines from localize.json's content `doc`."""
    pages = []
    for task in doc["tasks"]:
        pages += [_recovery_page(doc, task, d) for d in doc["patching"]["directions"]]
        if "conditions" in (doc.get("steering") or {}):
            pages.append(_steering_page(doc, task))
        if "by_alpha" in (doc.get("dose") or {}):
            pages.append(_dose_page(doc, task))
    return Section(pages, tables(doc), summary_lines(doc))


def render_localize(localize_json: Path, pdf: Path, *, progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Render the localisation report of `localize_json` to `pdf` (a .pdf) with `<stem>_figures/`
    and `<stem>_tables/` beside it (written in a staging folder and swapped in at the end).
    `progress(done, total, what)` before the pages, after each page and after the tables."""
    from alignlens.report.render import render_pdf

    pdf = Path(pdf)
    if pdf.suffix.lower() != ".pdf":
        raise AlignlensError(f"{pdf}: the report's output must end in .pdf")
    doc = read_localize_file(Path(localize_json))

    def pages() -> tuple[list[Page], list[Table], list[str]]:
        section = build(doc)
        front = summary_pages(section.summary_lines)
        every = front + section.pages
        every.insert(len(front), contents_page(every))  # lazy: lists the final page list, itself included
        return every, section.tables, section.summary_lines
    return render_pdf(pdf, pages, f"alignlens {__version__} · localize", "alignlens causal localisation", progress)
