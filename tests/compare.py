"""Comparing results reached along two different computational paths (not part of the library).

Two paths to the same numbers (another batch shape, thread count, process count, a pooled vs a
single LM-head call) agree only to float rounding, and which bits differ depends on the CPU's BLAS
kernels: a test asserting bit-equality across paths passes on one machine and fails on another. So
these helpers compare structure, strings and integers exactly and floats within a stated tolerance.
Along ONE path (a resumed run vs the uninterrupted one, a file written and re-read) compare bytes.

Tolerances used by the tests (float32 forward passes, float64 sums):
- `PROB_ATOL` = 1e-6 on probabilities: float32 rounding of a softmax over Gemma's 262k words is
  ~1e-7 per term; the observed cross-path differences are <= 6e-7 (issue 19: 0.32927635 vs 0.32927641).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

PROB_ATOL = 1e-6


def assert_close(a: Any, b: Any, *, atol: float = PROB_ATOL, rtol: float = 1e-5, where: str = "") -> None:
    """Equal JSON-like structures: same keys, lengths, strings, booleans and integers; floats within
    `atol + rtol * |b|` (NaN equals NaN). Raises AssertionError naming the first difference's path."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str):
        assert a == b, f"{where}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b) if isinstance(b, dict) else b}"
        for k in a:
            assert_close(a[k], b[k], atol=atol, rtol=rtol, where=f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, atol=atol, rtol=rtol, where=f"{where}[{i}]")
    elif isinstance(a, int) and isinstance(b, int):
        assert a == b, f"{where}: {a} != {b}"
    else:
        x, y = float(a), float(b)
        assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= atol + rtol * abs(y), f"{where}: {x!r} vs {y!r}"


def load_result(path: Path) -> Any:
    """A result file as plain data: JSON, JSONL (a list of rows) or safetensors ({name: nested lists})."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k: v.tolist() for k, v in sorted(load_file(str(path)).items())}
    return json.loads(path.read_text(encoding="utf-8"))


def assert_files_close(a: Path, b: Path, *, atol: float = PROB_ATOL, rtol: float = 1e-5,
                       ignore: set[str] = frozenset()) -> None:
    """`assert_close` of two result files; top-level keys in `ignore` are left out (e.g. times)."""
    x, y = load_result(a), load_result(b)
    if isinstance(x, dict) and ignore:
        x, y = ({k: v for k, v in d.items() if k not in ignore} for d in (x, y))
    assert_close(x, y, atol=atol, rtol=rtol, where=Path(a).name)
