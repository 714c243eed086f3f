"""Section 2, the claims: one table row per (claim, effect it rests on) with the metric, the test, the
effect with its interval, MDE80, the effect's and the claim's verdict; then each claim's sentence
from study.json and the related contrasts' sentences (never an inconclusive one called a refutation)."""

from __future__ import annotations

from alignlens.report.layout import Section, Table
from alignlens.report.study.doc import (VERDICT_COLOR, VERDICT_FILL, est_ci, find_entry, metric_name, num, pval,
                                        sections)
from alignlens.report.study.table import Column, Para, table_pages, text_pages

SECTION = "Claims"
VERDICT_RULES = (
    "supported: the whole 95% interval lies above 0 (the claimed side); contradicted: it lies wholly below 0; "
    "inconclusive: it includes 0, so the data cannot tell: not a refutation, and effects smaller than ±MDE80 would go "
    "undetected; mixed: the arms testing a claim disagree; not testable: degenerate data (too few items, one gold "
    "label, an undefined metric or a zero-width interval); not run: no arm of the study tests it (the sentence names "
    "what it needs).")

COLUMNS = [Column("#", 0.025, "center"), Column("claim", 0.2), Column("metric", 0.07), Column("test", 0.17),
           Column("effect tested (task: what)", 0.17), Column("Δ or slope [95% CI]", 0.13, "center"),
           Column("p", 0.04, "center"), Column("MDE80", 0.045, "center"), Column("effect verdict", 0.075, "center"),
           Column("claim verdict", 0.075, "center")]


def _what(ref: dict, e: dict | None, multi_task: bool) -> str:
    where = f"{ref.get('task')}" + (f" ({ref['variant']})" if ref.get("variant") not in (None, "standard") else "")
    if e is None:
        return f"{where}: {ref.get('id')} (not in study.json)"
    label = e.get("label") or e.get("id")
    if e.get("kind") == "trend":
        label = f"slope over log2(training languages) of {', '.join(e.get('arms', []))} ({e.get('group')})"
    return f"{where}: {label}" if multi_task or where != ref.get("task") else label


def claim_rows(doc: dict) -> tuple[list[list[str]], list[list[str | None]], list[list]]:
    """(table rows, their colours, CSV rows) of the claims."""
    multi = len(dict(sections(doc))) > 1
    rows, colors, csv = [], [], []
    for c in doc.get("claims", []):
        refs = c.get("effects") or []
        fill = VERDICT_FILL.get(c["verdict"])
        if not refs:
            rows.append([str(c["id"]), c["claim"], metric_name(c.get("metric")) if c.get("metric") else "—", c.get("test", "—"),
                         "—", "—", "—", "—", "—", c["verdict"]])
            colors.append([None] * 9 + [fill])
            csv.append([c["id"], c["claim"], c["verdict"], c.get("metric") or "", c.get("test", ""), "", "", "", "", "", "",
                        "", "", "", c["text"]])
            continue
        for k, ref in enumerate(refs):
            e = find_entry(doc, ref) or {}
            ev = e.get("verdict", "—")
            rows.append([str(c["id"]) if k == 0 else "", c["claim"] if k == 0 else "", metric_name(e.get("metric")),
                         c.get("test", "—") if k == 0 else "", _what(ref, e or None, multi),
                         est_ci(e) if e else "—", pval(e.get("p")), num(e.get("mde80"), 3, sign=False),
                         ev, c["verdict"] if k == 0 else ""])
            colors.append([None] * 8 + [VERDICT_FILL.get(ev), fill if k == 0 else None])
            lo, hi = (e.get("ci95") or [None, None])
            csv.append([c["id"], c["claim"], c["verdict"], e.get("metric", ""), c.get("test", ""), ref.get("task", ""),
                        ref.get("variant", ""), ref.get("id", ""), _csv(e.get("estimate")), _csv(lo), _csv(hi),
                        _csv(e.get("p")), _csv(e.get("mde80")), ev, c["text"] if k == 0 else ""])
    return rows, colors, csv


def _csv(x):
    return "" if x is None else x


def build(doc: dict) -> Section:
    rows, colors, csv = claim_rows(doc)
    sub = ("The paper's claims, each tested on the arms of this study that can test it (one row per effect it rests on). "
           "effect: macro Δ of the arm vs the base model over a language group (or a contrast of two arms, or a dose-response "
           "slope), on the metric named. " + VERDICT_RULES)
    pages = table_pages(SECTION, "The paper's claims", "claims", sub, COLUMNS, rows, colors, fontsize=7.2)
    paras = [Para(VERDICT_RULES, 8.0, color="#444444", after=0.8)]
    for c in doc.get("claims", []):
        paras.append(Para(f"Claim {c['id']}: {c['verdict']}", 9.5, "bold", VERDICT_COLOR.get(c["verdict"], "black"), after=0.2))
        paras.append(Para(c["text"], 9.0, after=0.35 if c.get("related") else 0.8))
        related = [find_entry(doc, {"task": r.get("task"), "variant": r.get("variant"), "id": r.get("id")})
                   if isinstance(r, dict) else _related(doc, r) for r in c.get("related") or []]
        for r in related:
            if r and r.get("text"):
                paras.append(Para(f"Related: {r['text']}", 8.5, color="#333333", indent=14.0, after=0.25))
        if related:
            paras[-1].after = 0.8
    pages += text_pages(SECTION, "The claims in words", "claims_text",
                        "Each claim's sentence as study.json states it: what the test shows, with the estimate, its 95% "
                        "interval and, for an inconclusive one, the MDE80; then the related contrasts.", paras)
    header = ["claim", "claim_text", "claim_verdict", "metric", "test", "task", "variant", "effect_id", "estimate",
              "ci95_lo", "ci95_hi", "p", "mde80", "effect_verdict", "sentence"]
    return Section(pages=pages, tables=[Table("study_claims.csv", header, csv)])


def _related(doc: dict, rid: str) -> dict | None:
    """A related entry named by id only (study.json's `related`): searched in every task of the
    standard evaluation, then of the variants."""
    for variant in ["standard", *doc.get("variants", {})]:
        for task, _ in sections(doc, variant):
            e = find_entry(doc, {"task": task, "variant": variant, "id": rid})
            if e:
                return e
    return None
