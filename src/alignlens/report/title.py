"""Title page: who and what was run (each run's manifest, including the data hashes) and the
study's languages in every script."""

from __future__ import annotations

from datetime import datetime, timezone

from alignlens import __version__
from alignlens.report.languages import HIGH_RESOURCE, LOW_RESOURCE, lang_label
from alignlens.report.layout import Page, Section, new_fig, wrap
from alignlens.report.runs import Runs
from alignlens.results.schema import Run


def data_hashes(manifest: dict, length: int = 12) -> str:
    """'emotion 1a2b3c4d5e6f, snli …': each task's data hash (manifest data.tasks.<task>.hash, as
    `evaluate.make_manifest` writes it), shortened to `length` hex digits; '—' when none is recorded."""
    data = manifest.get("data") or {}
    tasks = data.get("tasks")
    hashes = []
    if isinstance(tasks, dict):
        hashes = [f"{t} {str(v['hash'])[:length]}" for t, v in tasks.items() if isinstance(v, dict) and v.get("hash")]
    if not hashes and data.get("hash"):  # an older single-hash manifest
        hashes = [str(data["hash"])[:length]]
    return ", ".join(hashes) or "—"


def _options_text(opts: dict) -> str:
    """Run options without those shown in their own rows (tasks, languages, limit); nested options
    flattened as group.key=value."""
    bits = []
    for k, v in opts.items():
        if k in ("tasks", "languages", "limit"):
            continue
        bits += [f"{k}.{kk}={vv}" for kk, vv in v.items()] if isinstance(v, dict) else [f"{k}={v}"]
    return ", ".join(bits) or "—"


def manifest_rows(run: Run) -> list[tuple[str, str]]:
    """(label, text) rows of a run's manifest table on the title page."""
    m = run.manifest
    model, data = m.get("model", {}), m.get("data", {})
    limit = data.get("limit")
    return [
        ("folder", str(run.path)),
        ("model", f"{model.get('name', '—')}   spec: {model.get('spec', '—')}"),
        ("model path / hash", f"{model.get('path', '—')}   {str(model.get('hash', '—'))[:16]}"),
        ("architecture / layers", f"{model.get('architecture', '—')} / {model.get('n_layers', '—')}"),
        ("dtype / device", f"{model.get('dtype', '—')} / {model.get('device', '—')}"),
        ("trained languages", ", ".join(lang_label(l) for l in m.get("trained_languages") or []) or "— (none)"),
        ("tasks", ", ".join(map(str, data.get("tasks") or [])) or "—"),
        ("languages", " ".join(data.get("languages") or []) or "—"),
        ("items / task×lang", "all" if limit is None else str(limit)),
        ("data hash (sha256)", data_hashes(m)),
        ("options", _options_text(m.get("options") or {})),
        ("seed", str(m.get("seed", "—"))),
        ("versions", ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()) or "—"),
        ("alignlens / git", f"{m.get('alignlens_version', '—')} / {str(m.get('git_commit') or '—')[:12]}"),
        ("command", str(m.get("command", "—"))),
        ("started → finished", f"{m.get('started', '—')} → {m.get('finished', '—')}"),
        ("analyses absent", ", ".join(run.absent) or "none"),
    ]  # fmt: skip


def build(runs: Runs) -> Section:
    return Section(pages=[Page("Title", "Title and run manifest", "title", lambda: _draw(runs), export=False)])


def _manifest_table(ax, run: Run, wrap_at: int) -> None:
    cells = [[k, wrap(v, wrap_at)] for k, v in manifest_rows(run)]
    tab = ax.table(cellText=cells, colWidths=[0.3, 0.7], loc="upper left", cellLoc="left")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7.5)
    row_lines = [max(x.count("\n") + 1 for x in row) for row in cells]
    unit = min(0.06, 1.0 / sum(row_lines))
    for (r, c), cell in tab.get_celld().items():
        cell.set_height(unit * row_lines[r])
        cell.set_edgecolor("#cccccc")
        if c == 0:
            cell.set_text_props(fontweight="bold")


def _draw(runs: Runs):
    names = " vs ".join(runs.role_label(i) for i in range(len(runs.runs)))
    fig = new_fig("alignlens report",
                  f"{names}\nGenerated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by alignlens "
                  f"{__version__} from saved results (no model loaded). Reproduces Zhang et al. (EMNLP 2024), "
                  "“Getting More from Less: LLMs are Good Spontaneous Multilingual Learners”.")  # fmt: skip
    n = len(runs.runs)
    width = 0.93 / n
    for i, run in enumerate(runs.runs):
        ax = fig.add_axes([0.03 + i * width, 0.34, width - 0.015, 0.46])
        ax.axis("off")
        ax.set_title(f"Run manifest — {runs.role_label(i)}", fontsize=10, loc="left", fontweight="bold")
        _manifest_table(ax, run, 62 if n > 1 else 130)
    # language legend: every script of the study, with resource group
    ax = fig.add_axes([0.03, 0.04, 0.94, 0.22])
    ax.axis("off")
    ax.set_title("Languages (code, native name; * = in a model's trained languages)", fontsize=10, loc="left", fontweight="bold")
    for gi, (gname, langs) in enumerate((("high-resource", HIGH_RESOURCE), ("low-resource", LOW_RESOURCE))):
        ax.text(0.0, 0.82 - gi * 0.45, gname, fontsize=9, fontweight="bold", transform=ax.transAxes, va="top")
        for j, l in enumerate(langs):
            ax.text(0.12 + (j % 6) * 0.148, 0.82 - gi * 0.45 - (j // 6) * 0.2, f"{lang_label(l)}{'*' if l in runs.trained else ''}",
                    fontsize=10, transform=ax.transAxes, va="top")  # fmt: skip
    return fig
