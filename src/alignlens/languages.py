"""The study's languages: codes in the paper's order, English and native names, resource groups."""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

#: Languages of the paper (Zhang et al. 2024), in the paper's order.
PAPER_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "de", "fr", "es", "it", "nl", "ja", "ru", "sv",
    "sl", "pl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn",
)

#: Native names, shown next to the codes (the report also uses them to prove every script renders).
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


def paper_order(langs: Iterable[str]) -> list[str]:
    """The paper's languages first, in the paper's order, then the others in the order given."""
    langs = list(dict.fromkeys(langs))
    return [lang for lang in PAPER_LANGUAGES if lang in langs] + [lang for lang in langs if lang not in PAPER_LANGUAGES]


def resource_group(lang: str) -> str:
    """'high', 'low' or 'other'."""
    return "high" if lang in HIGH_RESOURCE else "low" if lang in LOW_RESOURCE else "other"


@lru_cache(maxsize=1)
def language_names() -> dict[str, str]:
    """Language code -> English name (the bundled `resources/data/languages.json`)."""
    path = resources.files("alignlens") / "resources" / "data" / "languages.json"
    return json.loads(path.read_text(encoding="utf-8"))


def language_name(code: str) -> str:
    """English name of `code` (the code itself when unknown)."""
    return language_names().get(code, code)
