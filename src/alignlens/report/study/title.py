"""Section 1, title and plan: the study's options, its arms, every step with its status, wall time and
commit, and the command that runs each step not finished."""

from __future__ import annotations

from alignlens.report.languages import lang_label
from alignlens.report.layout import Page, Section, Table, new_fig, short_paths
from alignlens.report.study.doc import command_text, duration, metric_name, sections, test_text
from alignlens.report.study.table import (BOTTOM, PAGE_H_PT, Column, draw_rows, lay_out, subtitle_bottom,
                                          table_pages)

SECTION = "Study and plan"
MISSING_FILL = "#fff4c7"
FONT = 8.0


def _options(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items()) or "— (the preset's defaults)"


def _commits(doc: dict) -> str:
    """'953bfbbd99e5-dirty (study.json); steps: 4651be54f520-dirty (9 steps)'."""
    own = (doc.get("alignlens") or {}).get("commit")
    counts: dict[str, int] = {}
    for s in doc.get("steps", []):
        if s.get("commit"):
            counts[s["commit"]] = counts.get(s["commit"], 0) + 1
    text = f"{_short_commit(own)} (study.json, alignlens {(doc.get('alignlens') or {}).get('version', '?')})"
    if counts:
        text += "; steps: " + ", ".join(f"{_short_commit(c)} ({n} step{'s' * (n != 1)})" for c, n in counts.items())
    elif any(s.get("status") == "finished" for s in doc.get("steps", [])):
        text += "; the steps' commits are not recorded in this study.json (collected before they were)"
    return text


def _short_commit(c) -> str:
    if not c:
        return "—"
    c = str(c)
    return c[:12] + ("-dirty" if c.endswith("-dirty") else "")


def _wall(doc: dict) -> str:
    by: dict[str, float] = {}
    for s in doc.get("steps", []):
        if s.get("wall_s") is not None:
            by[s.get("kind", "?")] = by.get(s.get("kind", "?"), 0.0) + float(s["wall_s"])
    if not by:
        return "— (no finished step)"
    return f"{duration(sum(by.values()))} in all (" + ", ".join(f"{k} {duration(v)}" for k, v in by.items()) + ")"


def fact_rows(doc: dict) -> list[list[str]]:
    """(label, text) rows of the title page."""
    st = doc.get("study", {})
    steps = doc.get("steps", [])
    done = sum(s.get("status") == "finished" for s in steps)
    tasks = []
    langs: list[str] = []
    n_items = []
    for task, sec in sections(doc):
        tasks.append(f"{task} (labels {', '.join(sec['labels'])}; primary metric {metric_name(sec['primary_metric'])})")
        langs += [x for x in sec["languages"] if x not in langs]
        counts = sorted({v for v in (sec.get("n_items") or {}).values() if v is not None})
        per = "–".join(str(c) for c in (counts[:1] + counts[-1:] if len(counts) > 1 else counts)) or "?"
        n_items.append(f"{task}: {per} per language, {sec.get('n_items_shared', '?')} shared by every run and language")
    if not langs:
        langs = st.get("languages") if isinstance(st.get("languages"), list) else []
    irr = st.get("irrelevant_labels")
    words = ", ".join(f"{k} → {v}" for k, v in (st.get("irrelevant_words") or {}).items())
    missing = doc.get("missing", [])
    rows = [
        ["model", short_paths(str(st.get("model", "—")))],
        ["tasks", "; ".join(tasks) or ", ".join(map(str, st.get("tasks", []))) or "—"],
        ["evaluation languages", " · ".join(lang_label(x) for x in langs) or str(st.get("languages", "—"))],
        ["items", f"indices {st.get('items', 'all')}, limit {st.get('limit', '—')} per language"
                  f"{', label-balanced' if st.get('balanced') else ''}; " + ("; ".join(n_items) or "no evaluation finished")],
        ["training seeds", f"{st.get('seeds', '—')} (default of every arm; the arms' own below)"],
        ["training defaults", _options(st.get("train") or {})],
        ["evaluation", f"batch size {st.get('batch_size', '—')}; analyses {'on' if st.get('analyses') else 'off'}"
                       f"; irrelevant-label variant {'on (' + words + ')' if irr else 'off'}"],
        ["resampling", test_text(doc)],
        ["steps", f"{done} of {len(steps)} finished" + (f"; not finished: {', '.join(missing)} (commands: Steps page)"
                                                        if missing else "; every step finished")],
        ["wall time", _wall(doc)],
        ["commits", _commits(doc)],
        ["collected", f"{doc.get('created', '—')} (study.json, schema {doc.get('schema', '—')})"],
    ]
    return rows


def arm_rows(doc: dict) -> list[list[str]]:
    out = []
    st_model = doc.get("study", {}).get("model")
    for a in doc.get("arms", []):
        extra = []
        if a.get("model") and a.get("model") != st_model:
            extra.append(f"model {short_paths(a['model'])}")
        if a.get("analyses") is not None:
            extra.append(f"analyses {'on' if a['analyses'] else 'off'}")
        if a.get("irrelevant_labels") is not None:
            extra.append(f"irrelevant labels {'on' if a['irrelevant_labels'] else 'off'}")
        out.append([a["name"], " ".join(a.get("languages") or []), str(a.get("target", "—")), str(a.get("questions", "—")),
                    str(a.get("control", "—")), ", ".join(map(str, a.get("seeds") or [])), _options(a.get("train") or {})
                    if a.get("train") else "— (study defaults)", "; ".join(extra) or "—"])
    return out


ARM_COLUMNS = [Column("arm", 0.11), Column("training languages", 0.14), Column("target", 0.06, "center"),
               Column("questions", 0.09), Column("control", 0.07, "center"), Column("seeds", 0.07, "center"),
               Column("training options (beyond the study's)", 0.26), Column("other", 0.20)]
FACT_COLUMNS = [Column("", 0.14), Column("", 0.86)]


def step_rows(doc: dict) -> tuple[list[list[str]], list[list[str | None]]]:
    rows, colors = [], []
    for s in doc.get("steps", []):
        done = s.get("status") == "finished"
        rows.append([s["name"], str(s.get("status", "—")), duration(s.get("wall_s")) if done else "—",
                     str(s.get("finished") or "—") if done else "—", _short_commit(s.get("commit")) if done else "—",
                     str(s.get("hash", ""))[:12], "" if done else command_text(s.get("command"))])
        colors.append([None] * 7 if done else [MISSING_FILL] * 7)
    return rows, colors


STEP_COLUMNS = [Column("step", 0.17), Column("status", 0.06, "center"), Column("wall time", 0.08, "right"),
                Column("finished", 0.14), Column("commit", 0.11), Column("hash", 0.09),
                Column("command that runs it (steps not finished)", 0.35)]


def build(doc: dict) -> Section:
    name = doc.get("name", "?")
    sub = (f"A replicated study of question alignment, built from study.json only (no model loaded): "
           f"{len(doc.get('arms', []))} arm(s) against the base model, each trained with its seeds and evaluated on the "
           "same held-out items. Tests the claims of Zhang et al. (EMNLP 2024), “Getting More from Less: LLMs are Good "
           "Spontaneous Multilingual Learners”. Every verdict names its metric and test; an interval that includes 0 is "
           "inconclusive, never a refutation.")
    facts = fact_rows(doc)
    arms = arm_rows(doc)
    fact_laid = lay_out(FACT_COLUMNS, facts, FONT, 0.94, set())
    arm_laid = lay_out(ARM_COLUMNS, arms, FONT, 0.94, set())
    top = subtitle_bottom(sub)
    need = (sum(fact_laid.heights) + fact_laid.head_h * 0 + arm_laid.head_h + sum(arm_laid.heights)) / PAGE_H_PT + 0.05
    together = need <= top - BOTTOM

    def draw():
        fig = new_fig(f"Study {name}", sub)
        y = _facts(fig, facts, fact_laid, top)
        if together:
            fig.text(0.03, y - 0.015, "Arms", fontsize=10, fontweight="bold", va="top")
            draw_rows(fig, ARM_COLUMNS, arm_laid, list(range(len(arms))), y - 0.045, FONT, None, set())
        return fig

    pages = [Page(SECTION, f"Study {name}: options and arms" if together else f"Study {name}: options", "study", draw, export=False)]
    if not together:
        pages += table_pages(SECTION, "Arms", "arms", "Each arm: training languages, translation target, the questions "
                             "trained on, the control, its training seeds and options.", ARM_COLUMNS, arms, fontsize=FONT)
    rows, colors = step_rows(doc)
    done = sum(s.get("status") == "finished" for s in doc.get("steps", []))
    sub_steps = (f"{done} of {len(rows)} steps finished. Every step has a content hash of everything that determines its "
                 "numbers; a step is finished when its folder holds its outputs with the current hash (stale: another hash; "
                 "partial: interrupted). Highlighted: not finished, with the command that runs it (DIR: this study's folder, "
                 "where study.pdf lies); then `alignlens study report DIR` again. Wall time and commit from each step's record "
                 "and manifest.")
    pages += table_pages(SECTION, "Steps", "steps", sub_steps, STEP_COLUMNS, rows, colors, fontsize=7.2)
    tables = [
        Table("study_arms.csv", ["arm", "languages", "target", "questions", "control", "seeds", "train", "other"],
              [[r[0], r[1], r[2], r[3], r[4], " ".join(r[5].split(", ")), r[6], r[7]] for r in arms]),
        Table("study_steps.csv", ["step", "kind", "run", "status", "wall_s", "finished", "commit", "hash", "command"],
              [[s["name"], s.get("kind", ""), s.get("run", ""), s.get("status", ""),
                "" if s.get("wall_s") is None else s["wall_s"], s.get("finished") or "", s.get("commit") or "",
                s.get("hash", ""), command_text(s.get("command"))] for s in doc.get("steps", [])]),
    ]
    return Section(pages=pages, tables=tables)


def _facts(fig, facts: list[list[str]], laid, top: float) -> float:
    """The options block: bold labels, wrapped values, no header; returns the figure y of its bottom."""
    from alignlens.report.study.table import HPAD, LEFT, LINE, PAGE_W_PT, RIGHT, VPAD

    x_val = LEFT + (RIGHT - LEFT) * FACT_COLUMNS[0].width
    y = top
    lh = FONT * LINE / PAGE_H_PT
    for i, (label, _) in enumerate(facts):
        lines = laid.rows[i][1]
        fig.text(LEFT + HPAD / PAGE_W_PT, y - VPAD / PAGE_H_PT, label, fontsize=FONT, fontweight="bold", va="top")
        for j, line in enumerate(lines):
            fig.text(x_val + HPAD / PAGE_W_PT, y - VPAD / PAGE_H_PT - j * lh, line, fontsize=FONT, va="top")
        y -= laid.heights[i] / PAGE_H_PT
        fig.add_artist(_rule(fig, y))
    return y


def _rule(fig, y: float):
    from matplotlib.lines import Line2D

    from alignlens.report.study.table import LEFT, RIGHT

    return Line2D([LEFT, RIGHT], [y, y], transform=fig.transFigure, color="#dddddd", lw=0.5)
