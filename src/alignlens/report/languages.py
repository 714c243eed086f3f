"""The study's languages as the report shows them: native names, resource groups, order."""

from __future__ import annotations

from collections.abc import Iterable

from alignlens.data import PAPER_LANGUAGES

#: The 20 study languages in the paper's order.
LANGUAGES: tuple[str, ...] = PAPER_LANGUAGES

#: Native names, shown next to the codes (this is also how the report proves every script renders).
NATIVE_NAMES: dict[str, str] = {
    "en": "English", "zh": "中文", "de": "Deutsch", "fr": "français", "es": "español",
    "it": "italiano", "nl": "Nederlands", "ja": "日本語", "ru": "русский", "sv": "svenska",
    "sl": "slovenščina", "pl": "polski", "bg": "български", "no": "norsk", "ms": "Bahasa Melayu",
    "is": "íslenska", "hi": "हिन्दी", "th": "ไทย", "sw": "Kiswahili", "bn": "বাংলা",
}  # fmt: skip

# Resource groups, following the paper's convention (Zhang et al., 2024): the "high-resource"
# languages are the majority languages of LLM pre-training corpora, the "low-resource" ones are the
# minority languages. Languages outside the 20 fall into "other".
HIGH_RESOURCE: tuple[str, ...] = ("en", "zh", "de", "fr", "es", "it", "nl", "ja", "ru", "sv", "pl")
LOW_RESOURCE: tuple[str, ...] = ("sl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn")


def resource_group(lang: str) -> str:
    """'high', 'low' or 'other'."""
    return "high" if lang in HIGH_RESOURCE else "low" if lang in LOW_RESOURCE else "other"


def lang_label(lang: str) -> str:
    """'hi हिन्दी' (code + native name); the bare code for languages outside the 20."""
    name = NATIVE_NAMES.get(lang)
    return f"{lang} {name}" if name else lang


def order_languages(langs: Iterable[str]) -> list[str]:
    """High-resource first, then low-resource, then others; the paper's order within a group."""
    langs = list(dict.fromkeys(langs))
    rank = {l: i for i, l in enumerate(HIGH_RESOURCE + LOW_RESOURCE)}
    return sorted(langs, key=lambda l: (rank.get(l, len(rank)), l))
