"""The study's languages as the report shows them: code + native name, resource-group order.

The facts (codes, names, groups) live in `alignlens.languages`."""

from __future__ import annotations

from collections.abc import Iterable

from alignlens.languages import HIGH_RESOURCE, LOW_RESOURCE, NATIVE_NAMES, PAPER_LANGUAGES, resource_group  # noqa: F401

#: The 20 study languages in the paper's order.
LANGUAGES: tuple[str, ...] = PAPER_LANGUAGES


def lang_label(lang: str) -> str:
    """'hi हिन्दी' (code + native name); the bare code for languages outside the 20."""
    name = NATIVE_NAMES.get(lang)
    return f"{lang} {name}" if name else lang


def order_languages(langs: Iterable[str]) -> list[str]:
    """High-resource first, then low-resource, then others; the paper's order within a group."""
    langs = list(dict.fromkeys(langs))
    rank = {l: i for i, l in enumerate(HIGH_RESOURCE + LOW_RESOURCE)}
    return sorted(langs, key=lambda l: (rank.get(l, len(rank)), l))
