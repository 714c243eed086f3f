"""Fonts for the report: Noto families covering every script of the 20 study languages.

The 20 languages use Latin (with diacritics), Cyrillic (ru, bg), Han/Kana (zh, ja), Devanagari (hi),
Bengali (bn) and Thai (th). Matplotlib >= 3.11 shapes complex scripts (Devanagari conjuncts, Bengali,
Thai vowel marks) through its text layout, and falls back glyph by glyph through a *list* of
families in ``font.family``; we fill that list with the Noto families below.

Fonts come from Debian packages ``fonts-noto-core`` and ``fonts-noto-cjk``. When a family is missing
we warn ONCE (listing the missing families and the apt line) and keep going with what is there
(DejaVu Sans covers Latin and Cyrillic; the other scripts then render as boxes).
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache

log = logging.getLogger(__name__)

#: script -> Noto family names, in order of preference (the first one installed is used).
SCRIPT_FAMILIES: dict[str, tuple[str, ...]] = {
    "latin+cyrillic": ("Noto Sans",),
    "cjk": ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR"),
    "devanagari": ("Noto Sans Devanagari",),
    "bengali": ("Noto Sans Bengali",),
    "thai": ("Noto Sans Thai", "Noto Sans Thai Looped", "Noto Looped Thai"),
}

#: A sample string per script, used by tests and by `missing_scripts` to check glyph coverage.
SCRIPT_SAMPLES: dict[str, str] = {
    "latin+cyrillic": "slovenščina íslenska русский български",
    "cjk": "中文日本語",
    "devanagari": "हिन्दी",
    "bengali": "বাংলা",
    "thai": "ไทย",
}

#: Always appended last (ships with matplotlib).
FALLBACK_FAMILY = "DejaVu Sans"

APT_LINE = "apt-get install -y fonts-noto-core fonts-noto-cjk"

_warned = False


def _installed_families() -> set[str]:
    from matplotlib import font_manager

    return {f.name for f in font_manager.fontManager.ttflist}


@lru_cache(maxsize=1)
def _resolve() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(families to use in fallback order, scripts with no installed family)."""
    installed = _installed_families()
    chosen: list[str] = []
    missing: list[str] = []
    for script, candidates in SCRIPT_FAMILIES.items():
        hit = next((c for c in candidates if c in installed), None)
        if hit is None:
            missing.append(script)
        elif hit not in chosen:
            chosen.append(hit)
    chosen.append(FALLBACK_FAMILY)
    return tuple(chosen), tuple(missing)


def missing_scripts() -> list[str]:
    """Scripts (keys of `SCRIPT_FAMILIES`) for which no Noto family is installed; [] when all are."""
    return list(_resolve()[1])


def font_families() -> list[str]:
    """The font.family fallback list: one installed Noto family per script, then DejaVu Sans."""
    return list(_resolve()[0])


def _warn_missing_once(missing: tuple[str, ...]) -> None:
    global _warned
    if not missing or _warned:
        return
    _warned = True
    names = "; ".join(f"{s} ({' / '.join(SCRIPT_FAMILIES[s])})" for s in missing)
    msg = (
        f"alignlens report: Noto fonts missing for scripts: {names}. Text in these scripts will "
        f"render as boxes. Install them with: {APT_LINE}"
    )
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def rc_params() -> dict:
    """rcParams for the report (use with ``matplotlib.rc_context``)."""
    families, missing = _resolve()
    _warn_missing_once(missing)
    return {
        "font.family": list(families),
        "pdf.fonttype": 42,  # embed TrueType (CID) fonts, not Type 3 bitmaps-as-glyphs
        "ps.fonttype": 42,
        "svg.fonttype": "path",  # SVGs render identically without the fonts installed
        "axes.unicode_minus": True,
    }


def _reset_for_tests() -> None:
    """Forget the cached font lookup and the warned-once flag."""
    global _warned
    _warned = False
    _resolve.cache_clear()
