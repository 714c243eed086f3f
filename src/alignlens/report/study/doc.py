"""What every section of the study report reads from study.json, and how it writes numbers and verdicts.

Pure functions of the parsed study.json dict (`results.schema.read_study_file`); no file is read
here. Every path a section writes goes through `command_text` / `layout.short_paths`: the report
never shows an absolute local path.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterator

from alignlens.report.layout import Page, new_fig, short_paths, wrap_to_width

#: Verdicts of study.json (effects, contrasts, trends and claims), in the order the report explains them.
VERDICTS = ("supported", "contradicted", "inconclusive", "mixed", "not testable", "not run")
#: Cell colour of a verdict (tables) and marker colour (figures).
VERDICT_FILL = {"supported": "#d9efd3", "contradicted": "#f6d2d2", "inconclusive": "#eeeeee", "mixed": "#fbe5c8",
                "not testable": "#fff4c7", "not run": "#ffffff"}
VERDICT_COLOR = {"supported": "#2CA02C", "contradicted": "#D62728", "inconclusive": "#666666", "mixed": "#E08A00",
                 "not testable": "#B8860B", "not run": "#999999"}
#: What "inconclusive" means, wherever the report uses the word (never a refutation).
INCONCLUSIVE = "inconclusive: the interval includes 0 (not a refutation); effects smaller than ±MDE80 would go undetected"
METRIC_NAMES = {"auc": "AUC", "calibrated_accuracy": "calibrated accuracy", "accuracy": "accuracy",
                "balanced_accuracy": "balanced accuracy"}
METRIC_SHORT = {"auc": "AUC", "calibrated_accuracy": "cal. acc.", "accuracy": "acc.", "balanced_accuracy": "bal. acc."}
#: Language groups of an arm's effects, in report order (`study.collect.arm_groups`).
GROUPS = ("all", "trained", "untrained", "high-resource", "low-resource", "untrained-low-resource")
VARIANT_NAMES = {"standard": "", "irrelevant": "irrelevant labels"}


def metric_name(metric: str | None) -> str:
    return METRIC_NAMES.get(metric or "", metric or "—")


def num(x, digits: int = 3, sign: bool = True) -> str:
    """A number as '+0.053' ('0.053' without `sign`); '—' for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def ci(interval, digits: int = 3) -> str:
    """'[+0.016, +0.093]'; '—' without an interval."""
    if not interval or interval[0] is None or interval[1] is None:
        return "—"
    return f"[{num(interval[0], digits)}, {num(interval[1], digits)}]"


def est_ci(e: dict, digits: int = 3, key: str = "estimate") -> str:
    """'+0.053 [+0.016, +0.093]' of an effect, contrast or trend entry ('—' parts where undefined)."""
    return f"{num(e.get(key), digits)} {ci(e.get('ci95'), digits)}" if e.get("ci95") else num(e.get(key), digits)


def pval(p) -> str:
    if p is None:
        return "—"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def excludes_zero(e: dict) -> bool:
    """True when the entry's 95% interval lies wholly on one side of 0 (and it is testable)."""
    lo_hi = e.get("ci95")
    if not lo_hi or e.get("verdict") in ("not testable", None) or lo_hi[0] is None:
        return False
    return lo_hi[0] > 0 or lo_hi[1] < 0


def verdict_note(e: dict) -> str:
    """The verdict of an entry with what it means: 'supported', 'inconclusive (MDE80 ±0.091)',
    'not testable (<why>)'."""
    v = e.get("verdict") or "—"
    if v == "inconclusive":
        return f"inconclusive (MDE80 ±{num(e.get('mde80'), 3, sign=False)})"
    if v == "not testable" and e.get("not_testable"):
        return f"not testable ({e['not_testable']})"
    return v


def command_text(command: str | None) -> str:
    """A step's command as the report shows it: an absolute `--out` folder written as DIR (the study
    folder, where study.pdf lies), every other absolute path shortened (`layout.short_paths`)."""
    if not command:
        return "—"
    try:
        words = shlex.split(command)
    except ValueError:
        return short_paths(command)
    for i, w in enumerate(words[:-1]):
        if w in ("--out", "-o") and (words[i + 1].startswith("/") or words[i + 1].startswith("~")):
            words[i + 1] = "DIR"
    return short_paths(" ".join(shlex.quote(w) if w != "DIR" else w for w in words))


def duration(seconds) -> str:
    """'5 min 32 s', '2 h 05 min'; '—' for None."""
    if seconds is None:
        return "—"
    s = int(round(float(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


# ---- reading the dict ------------------------------------------------------------------------------


def sections(doc: dict, variant: str = "standard") -> Iterator[tuple[str, dict]]:
    """(task, its section) of the standard evaluation ("tasks") or of a variant ("variants.<variant>")."""
    src = doc.get("tasks", {}) if variant == "standard" else doc.get("variants", {}).get(variant, {})
    yield from src.items()


def arm(doc: dict, name: str) -> dict:
    """The study.json entry of an arm ({} when absent)."""
    return next((a for a in doc.get("arms", []) if a.get("name") == name), {})


def arm_names(doc: dict) -> list[str]:
    return [a["name"] for a in doc.get("arms", [])]


def trained(doc: dict, arm_name: str) -> list[str]:
    """An arm's training languages."""
    return list(arm(doc, arm_name).get("languages") or [])


def target(doc: dict, arm_name: str) -> str | None:
    return arm(doc, arm_name).get("target")


def entry_index(sec: dict) -> dict[str, dict]:
    """{id: entry} of a task section's effects, contrasts and trends (kind set on effects)."""
    out = {}
    for kind, key in (("effect", "effects"), ("contrast", "contrasts"), ("trend", "trends")):
        for e in sec.get(key, []):
            out[e["id"]] = {"kind": kind, **e}
    return out


def find_entry(doc: dict, ref: dict) -> dict | None:
    """The effect, contrast or trend a claim's `effects` reference ({task, variant, id}) names."""
    variant = ref.get("variant") or "standard"
    sec = dict(sections(doc, variant)).get(ref.get("task"))
    return entry_index(sec).get(ref.get("id")) if sec else None


def primary_effects(sec: dict, arm_name: str) -> list[dict]:
    """An arm's effects vs base on the task's primary metric, in `GROUPS` order."""
    m = sec["primary_metric"]
    got = {e["group"]: e for e in sec["effects"] if e.get("arm") == arm_name and e.get("metric") == m}
    return [got[g] for g in GROUPS if g in got] + [e for g, e in got.items() if g not in GROUPS]


def effect_of(sec: dict, arm_name: str, group: str, metric: str) -> dict | None:
    return next((e for e in sec["effects"] if e.get("arm") == arm_name and e.get("group") == group
                 and e.get("metric") == metric), None)


def arms_with_effects(doc: dict, sec: dict) -> list[str]:
    """The arms a task section has effects of, in the study file's order."""
    have = {e.get("arm") for e in sec.get("effects", [])}
    return [a for a in arm_names(doc) if a in have] + sorted(x for x in have - set(arm_names(doc)) if x)


def test_text(doc: dict) -> str:
    """The test behind every interval, in words (from study.json's `resampling`)."""
    r = doc.get("resampling", {})
    levels = " × ".join(r.get("levels") or ["items"])
    return (f"95% percentile interval of a bootstrap over {levels} ({r.get('n_resamples', '?')} resamples, seed "
            f"{r.get('seed', '?')}); p: two-sided bootstrap; MDE80 = 2.80 × se (the effect detected with 80% power)")


def title_suffix(task: str, variant: str) -> str:
    """' — emotion' or ' — emotion, irrelevant labels'."""
    v = VARIANT_NAMES.get(variant, variant)
    return f" — {task}" + (f", {v}" if v else "")


def slug(*parts: str) -> str:
    """A figure or table file name part: the parts joined by '_' (empty ones and the variant "standard"
    left out), letters, digits, '_' and '-' only."""
    text = "_".join(p for p in parts if p and p != "standard")
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in text)


def paged(section: str, name: str, what: str, task: str, variant: str, chunks: list, sub: str,
          draw_chunk) -> list[Page]:
    """One Page per chunk: title '<name> — <task>[, <variant>] (k/n)' (the part only when there are
    several), file name `slug(what, task, variant, k)`, drawn as `new_fig(title, sub)` then
    `draw_chunk(fig, chunk)`."""
    pages = []
    for k, chunk in enumerate(chunks):
        part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        title = f"{name}{title_suffix(task, variant)}{part}"

        def draw(chunk=chunk, title=title):
            fig = new_fig(title, sub)
            draw_chunk(fig, chunk)
            return fig
        pages.append(Page(section, title, slug(what, task, variant, str(k + 1) if part else ""), draw))
    return pages


def chunk_blocks(rows: list, key, size: int) -> list[list]:
    """`rows` cut into pages of at most `size` rows, a page break only between two blocks (rows of
    equal `key(row)`) unless one block alone exceeds `size`."""
    blocks: list[list] = []
    for r in rows:
        if blocks and key(blocks[-1][-1]) == key(r):
            blocks[-1].append(r)
        else:
            blocks.append([r])
    pages: list[list] = [[]]
    for b in blocks:
        while b:
            if pages[-1] and len(pages[-1]) + len(b) > size:
                pages.append([])
            take = b[: size - len(pages[-1])] if len(b) > size else b
            pages[-1].extend(take)
            b = b[len(take):]
    return [p for p in pages if p]


def fit(text: str, width_pt: float, fontsize: float, max_lines: int = 2) -> str:
    """`text` wrapped to `width_pt` points (measured, with a margin for raster hinting), at most
    `max_lines` lines (the last one ending in '…' when cut)."""
    lines = wrap_to_width(text, width_pt / 1.06, fontsize)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:-1] + "…"
    return "\n".join(lines)
