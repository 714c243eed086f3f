"""Title page: who and what was run (each run's manifest, including the data hashes and the items
evaluated) and the study's languages in every script. Every text on the page is measured as it is
drawn (`layout.text_width`, `wrap_to_width`), so the manifest tables wrap to their column and stop
above the language legend: nothing overlaps or runs off the page."""

from __future__ import annotations

from datetime import datetime, timezone

from alignlens import AlignlensError, __version__
from alignlens.report.languages import HIGH_RESOURCE, LOW_RESOURCE, lang_label
from alignlens.report.layout import Page, Section, new_fig, short_path, short_paths, text_width, wrap_to_width
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


#: Options shown in their own rows of the manifest table (tasks, languages, the item selection).
OWN_ROWS = ("tasks", "languages", "limit", "items", "balanced")


def _options_text(opts: dict) -> str:
    """Run options without those shown in their own rows (`OWN_ROWS`); nested options flattened as
    group.key=value."""
    bits = []
    for k, v in opts.items():
        if k in OWN_ROWS:
            continue
        bits += [f"{k}.{kk}={vv}" for kk, vv in v.items()] if isinstance(v, dict) else [f"{k}={v}"]
    return ", ".join(bits) or "—"


def items_text(run: Run) -> str:
    """What was evaluated per task × language, from summary.json's counts (= predictions.jsonl's rows),
    the item indices in predictions.jsonl and the selection options of the manifest, e.g.
    '4 per task × language: items 0-3 (selected by --items 0-3 --limit 50)'."""
    from alignlens.config import format_items

    m = run.manifest
    opts, data = m.get("options") or {}, m.get("data") or {}
    counts = [e["n"] for t in run.summary["tasks"].values() for e in t["languages"].values()]
    if not counts:
        return "—"
    n = str(counts[0]) if len(set(counts)) == 1 else f"{min(counts)}–{max(counts)}"
    text = f"{n} per task × language"
    indices = None
    if (run.path / "predictions.jsonl").is_file():
        try:
            cells = {frozenset(v) for v in run.predictions.values()}
        except AlignlensError:
            cells = set()
        if len(cells) == 1:
            indices = format_items(next(iter(cells)), max_runs=6)
        elif cells:
            indices = "differ by task × language"
    if indices:
        text += f": items {indices}"
    limit = opts["limit"] if "limit" in opts else data.get("limit")
    sel = ([f"--items {opts['items']}"] if opts.get("items") else []) + (["--balanced"] if opts.get("balanced") else [])
    sel.append(f"--limit {limit}" if limit is not None else "no --limit (all items)")
    return f"{text} (selected by {' '.join(sel)})"


def manifest_rows(run: Run) -> list[tuple[str, str]]:
    """(label, text) rows of a run's manifest table on the title page. Paths are shortened
    (`layout.short_path`): the report never writes an absolute local path; manifest.json has them."""
    m = run.manifest
    model, data = m.get("model", {}), m.get("data", {})
    return [
        ("folder", short_path(run.path)),
        ("model", f"{short_path(model.get('name', '—'))}   spec: {short_path(model.get('spec', '—'))}"),
        ("model path / hash", f"{short_path(model.get('path', '—'))}   {str(model.get('hash', '—'))[:16]}"),
        ("architecture / layers", f"{model.get('architecture', '—')} / {model.get('n_layers', '—')}"),
        ("dtype / device", f"{model.get('dtype', '—')} / {model.get('device', '—')}"),
        ("trained languages", ", ".join(lang_label(l) for l in m.get("trained_languages") or []) or "— (none)"),
        ("tasks", ", ".join(map(str, data.get("tasks") or [])) or "—"),
        ("languages", " ".join(data.get("languages") or []) or "—"),
        ("items / task×lang", items_text(run)),
        ("data hash (sha256)", data_hashes(m)),
        ("options", short_paths(_options_text(m.get("options") or {}))),
        ("seed", str(m.get("seed", "—"))),
        ("versions", ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()) or "—"),
        ("alignlens / git", f"{m.get('alignlens_version', '—')} / {str(m.get('git_commit') or '—')[:12]}"),
        ("command", short_paths(str(m.get("command", "—")))),
        ("started → finished", f"{m.get('started', '—')} → {m.get('finished', '—')}"),
        ("analyses absent", ", ".join(run.absent) or "none"),
    ]  # fmt: skip


def build(runs: Runs) -> Section:
    return Section(pages=[Page("Title", "Title and run manifest", "title", lambda: _draw(runs), export=False)])


# ---- drawing: every text is measured, so nothing overlaps or runs off the page ---------------------

#: Font sizes (pt) the manifest tables try, largest first, until both fit above the language legend.
FONT_SIZES = (8.0, 7.5, 7.0, 6.5, 6.0)
ROW_PAD = 3.0  # points between a row's text and the rule below it
COL_GAP = 0.02  # figure fraction between the two runs' tables
LEFT, RIGHT, BOTTOM = 0.03, 0.97, 0.045  # page margins (figure fraction; the footer is below BOTTOM)
TRUNCATED = "… (in full: manifest.json)"
HINTING = 1.05  # raster output draws text up to ~4% wider than measured (`layout.text_width`)


def _points(fig) -> tuple[float, float]:
    """Figure width and height in points."""
    w, h = fig.get_size_inches()
    return w * 72.0, h * 72.0


#: Resolutions the page's texts are measured at: the PDF's (72: its text metrics are FreeType's at
#: 72 dpi) and that of the exported PNGs (`render`, 110); glyphs hinted to whole pixels differ in size.
MEASURE_DPI = (72, 110)


def _renderers(fig) -> list:
    """Agg renderers at `MEASURE_DPI` to measure `fig`'s texts with (`_height`)."""
    from matplotlib.backends.backend_agg import RendererAgg

    w, h = fig.get_size_inches()
    return [RendererAgg(int(w * d), int(h * d), d) for d in MEASURE_DPI]


def _height(fig, renderers, artist) -> float:
    """Height of a drawn text in figure fraction: the largest at any of `renderers`' resolutions."""
    h_in = fig.get_size_inches()[1]
    return max(artist.get_window_extent(r, dpi=r.dpi).height / (h_in * r.dpi) for r in renderers)


#: A line of the tallest scripts the manifests can hold (Latin, CJK, Devanagari, Thai, Bengali):
#: its height bounds that of any line of theirs.
PROBE = "Ag 中文 हिन्दी ไทย বাংলা"


def _line_heights(fig, renderers, fontsize: float, weight: str = "normal") -> tuple[float, float]:
    """(height of a one-line text, added height per further line) at `fontsize`, in figure
    fraction, measured on `PROBE` (an upper bound for every line of the page's texts)."""
    one = fig.text(0, 0, PROBE, fontsize=fontsize, fontweight=weight)
    two = fig.text(0, 0, PROBE + "\n" + PROBE, fontsize=fontsize, fontweight=weight)
    h1, h2 = _height(fig, renderers, one), _height(fig, renderers, two)
    one.remove()
    two.remove()
    return h1, h2 - h1


def _manifest_lines(rows: list[tuple[str, str]], width_pt: float, fontsize: float, cap: int | None) -> list[tuple[str, list[str]]]:
    """Each row's value wrapped to `width_pt`; with `cap`, a value of more lines keeps its first
    cap - 1 lines and ends with `TRUNCATED`."""
    out = []
    for label, value in rows:
        lines = wrap_to_width(value, width_pt, fontsize)
        if cap is not None and len(lines) > cap:
            lines = lines[: cap - 1] + [TRUNCATED]
        out.append((label, lines))
    return out


def _manifest_block(fig, renderers, rows, x0: float, width: float, y0: float, fontsize: float,
                    cap: int | None) -> tuple[list, float, int]:
    """Draw one run's manifest rows in [x0, x0 + width] from y0 down (label bold, value wrapped to
    the column, a light rule under each row). Returns (the artists drawn, figure y of the bottom,
    the most lines a value took)."""
    from matplotlib.lines import Line2D

    fig_w, _ = _points(fig)
    label_pt = max(text_width(k, fontsize, "bold") for k, _ in rows) * HINTING + 8.0
    value_pt = (width * fig_w - label_pt) / HINTING - 4.0  # margins for raster hinting and the text box's padding
    pad = ROW_PAD / _points(fig)[1]
    h1, more = (max(pair) for pair in zip(_line_heights(fig, renderers, fontsize), _line_heights(fig, renderers, fontsize, "bold")))
    artists, y = [], y0
    wrapped = _manifest_lines(rows, value_pt, fontsize, cap)
    for label, lines in wrapped:
        a = fig.text(x0, y, label, fontsize=fontsize, fontweight="bold", va="top")
        b = fig.text(x0 + label_pt / fig_w, y, "\n".join(lines), fontsize=fontsize, va="top")
        y -= h1 + (len(lines) - 1) * more + pad
        rule = Line2D([x0, x0 + width], [y + pad / 2] * 2, transform=fig.transFigure, color="#dddddd", lw=0.5)
        fig.add_artist(rule)
        artists += [a, b, rule]
    return artists, y, max(len(lines) for _, lines in wrapped)


def _draw_manifests(fig, renderers, runs: Runs, y_top: float, y_bottom: float) -> None:
    """The runs' manifest tables side by side between y_top and y_bottom: the largest font of
    `FONT_SIZES` at which every table fits; if none does, long values are cut to fewer lines
    (ending in `TRUNCATED`) until they fit."""
    n = len(runs.runs)
    width = (RIGHT - LEFT - COL_GAP * (n - 1)) / n
    rows = [manifest_rows(r) for r in runs.runs]
    heads = []
    for i in range(n):
        head = wrap_to_width(f"Run manifest — {runs.role_label(i)}", width * _points(fig)[0] / HINTING, 10, "bold")
        heads.append(fig.text(LEFT + i * (width + COL_GAP), y_top, "\n".join(head), fontsize=10, fontweight="bold", va="top"))
    y0 = y_top - max(_height(fig, renderers, h) for h in heads) - 0.012

    def attempt(fontsize: float, cap: int | None) -> tuple[list, float, int]:
        drawn, bottom, longest = [], 1.0, 1
        for i in range(n):
            artists, b, most = _manifest_block(fig, renderers, rows[i], LEFT + i * (width + COL_GAP), width, y0, fontsize, cap)
            drawn, bottom, longest = drawn + artists, min(bottom, b), max(longest, most)
        return drawn, bottom, longest

    for fontsize in FONT_SIZES:
        drawn, bottom, longest = attempt(fontsize, None)
        if bottom >= y_bottom:
            return
        for a in drawn:
            a.remove()
    lo, hi, best = 2, longest - 1, 2  # no font size fits: the most lines per value that fit (bisection)
    while lo <= hi:
        cap = (lo + hi) // 2
        drawn, bottom, _ = attempt(FONT_SIZES[-1], cap)
        for a in drawn:
            a.remove()
        best, lo, hi = (cap, cap + 1, hi) if bottom >= y_bottom else (best, lo, cap - 1)
    attempt(FONT_SIZES[-1], best)


def _language_legend(fig, renderers, trained: list[str]) -> float:
    """The study's languages by resource group ('code native-name', * = trained), flowed into lines
    across the page from the bottom margin up. Returns the figure y of its heading's top."""
    fig_w, _ = _points(fig)
    fs, head_fs = 9.0, 10.0
    gap = 16.0 / fig_w  # between two languages
    x_items = 0.13
    probe = fig.text(0, 0, "Ag 中文 हिन्दी ไทย বাংলা", fontsize=fs)
    line = _height(fig, renderers, probe) * 1.15
    probe.remove()
    groups = []
    for gname, langs in (("high-resource", HIGH_RESOURCE), ("low-resource", LOW_RESOURCE)):
        placed, x, row = [], x_items, 0
        for l in langs:
            label = f"{lang_label(l)}{'*' if l in trained else ''}"
            w = text_width(label, fs) * HINTING / fig_w
            if x > x_items and x + w > RIGHT:
                x, row = x_items, row + 1
            placed.append((x, row, label))
            x += w + gap
        groups.append((gname, placed, row + 1))
    n_lines = sum(g[2] for g in groups)
    group_gap = 0.4 * line
    height = n_lines * line + group_gap * (len(groups) - 1)
    head = fig.text(LEFT, BOTTOM + height + 0.012, "Languages (code, native name; * = in a model's trained languages)",
                    fontsize=head_fs, fontweight="bold", va="bottom")  # fmt: skip
    y = BOTTOM + height
    for gname, placed, rows in groups:
        fig.text(LEFT, y, gname, fontsize=fs, fontweight="bold", va="top")
        for x, row, label in placed:
            fig.text(x, y - row * line, label, fontsize=fs, va="top")
        y -= rows * line + group_gap
    return BOTTOM + height + 0.012 + _height(fig, renderers, head)


def _draw(runs: Runs):
    names = " vs ".join(runs.role_label(i) for i in range(len(runs.runs)))
    fig = new_fig("alignlens report",
                  f"{names}\nGenerated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by alignlens "
                  f"{__version__} from saved results (no model loaded). Reproduces Zhang et al. (EMNLP 2024), "
                  "“Getting More from Less: LLMs are Good Spontaneous Multilingual Learners”.")  # fmt: skip
    renderers = _renderers(fig)  # to measure the texts as they will be drawn
    legend_top = _language_legend(fig, renderers, runs.trained)
    _draw_manifests(fig, renderers, runs, fig.content_top + 0.03, legend_top + 0.025)
    return fig
