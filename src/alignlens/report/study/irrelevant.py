"""Section 8, the irrelevant-label variant (`irrelevant_labels = true`): every model evaluated again with
label words unrelated to the task (the paper's ox/horse for sentiment). Its effects vs base, per
language Δ and label shares, drawn as sections 3, 4 and 7 draw the standard evaluation; claim 8
("the gain persists with irrelevant label words") reads these effects. Nothing when not run."""

from __future__ import annotations

from alignlens.report.layout import Section
from alignlens.report.study import diagnostics, forest, heatmap
from alignlens.report.study.table import Para, text_pages

SECTION = "Irrelevant labels"
VARIANT = "irrelevant"


def build(doc: dict) -> Section:
    if not doc.get("variants", {}).get(VARIANT):
        return Section()
    words = ", ".join(f"{k} → “{v}”" for k, v in (doc.get("study", {}).get("irrelevant_words") or {}).items())
    claim = next((c for c in doc.get("claims", []) if c.get("id") == 8), None)
    paras = [Para(f"Every model of the variant was evaluated again with irrelevant label words ({words or 'see study.toml'}): "
                  "the prompts' demonstrations and the scored answers use these words instead of the task's own labels, so "
                  "the model must learn the mapping from the demonstrations. The following pages show this variant's "
                  "effects vs base, per-language Δ and label shares, computed as for the standard evaluation (the same "
                  "items, resamples and tests).", 9.5, after=0.8)]
    if claim:
        paras += [Para(f"Claim 8: {claim['verdict']}", 9.5, "bold", after=0.2), Para(claim["text"], 9.0)]
    out = Section(pages=text_pages(SECTION, "Irrelevant-label variant", "irrelevant", None, paras))
    for part in (forest.task_section(doc, VARIANT, SECTION), heatmap.task_section(doc, VARIANT, SECTION),
                 diagnostics.task_section(doc, VARIANT, SECTION)):
        out.pages += part.pages
        out.tables += part.tables
    return out
