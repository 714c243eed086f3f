"""Every Python package of the source tree is listed in pyproject.toml (a missing one is absent from
a wheel or a non-editable install, while the editable install of the tests still finds it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(tool["packages"])
    dirs = tool["package-dir"]
    found = set()
    for name, rel in dirs.items():
        base = ROOT / rel
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            found.add(".".join((name, *parts)))
    missing = sorted(p for p in found if p not in listed and not p.startswith("alignlens.resources"))
    assert not missing, f"packages not listed in pyproject.toml: {missing}"
