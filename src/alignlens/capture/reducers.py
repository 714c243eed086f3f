"""Streaming reducers for the capture pass, and how their shards combine.

Every reducer here is updated batch by batch and serialised to a dict of tensors only
(``state_dict`` / ``from_state_dict``); positions whose mask is False (padding) never enter a
statistic. How shards from several processes combine differs:

- ``ActivationCounter`` holds int64 counts: ``merge`` (or ``all_reduce(SUM)`` on every state
  tensor) is exact and independent of the order of the shards.
- ``RowStore`` holds per-item rows: shards are gathered (``all_gather``, then ``merge``, a
  union of disjoint item sets); nothing is summed, so the result is exact.
- ``SumCount`` holds a float64 sum: floating-point addition is not associative, so merging the
  same shards in different orders can give sums that differ in the last bits (shards summing to
  0.1, 0.2 and 0.3 merge to 0.6000000000000001 or 0.6 depending on the order). Use a fixed
  merge order when results must be reproducible bit for bit. (The capture pass does not use it.)

State tensors live on the CPU; sums are float64, counts int64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from alignlens import AlignlensError

__all__ = ["SumCount", "ActivationCounter", "RowStore"]


def _as_tensor(x) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def _check_mask(mask, lead_shape: Sequence[int], what: str) -> torch.Tensor:
    mask = _as_tensor(mask)
    if mask.dtype != torch.bool:
        raise AlignlensError(f"{what}: mask must be bool, got {mask.dtype}")
    if tuple(mask.shape) != tuple(lead_shape):
        raise AlignlensError(f"{what}: mask shape {tuple(mask.shape)} does not match leading dims {tuple(lead_shape)}")
    return mask


class SumCount:
    """Running sum and count of vectors over the leading (batch/position) dims (float64 sum:
    merges are exact only up to rounding, and depend on the merge order; see the module docstring).

    ``update(x)`` with ``x`` [batch, *feature] adds ``x.sum(0)`` and ``batch``;
    ``update(x, mask)`` with ``mask`` bool of shape ``x.shape[:k]`` adds only the
    rows where the mask is True (e.g. ``x`` [batch, pos, d], ``mask`` [batch, pos]).
    ``mean()`` is float64 [*feature]. ``feature_shape`` may be given up front so an
    empty shard still has a well-shaped state (needed for all_reduce).
    """

    def __init__(self, feature_shape: Sequence[int] | None = None) -> None:
        self.sum: torch.Tensor | None = (
            None if feature_shape is None else torch.zeros(tuple(feature_shape), dtype=torch.float64)
        )
        self.count: int = 0

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add rows of ``x``: all rows of dim 0, or the rows selected by ``mask`` (bool, ``x.shape[:mask.ndim]``)."""
        x = _as_tensor(x)
        if mask is None:
            if x.ndim < 1:
                raise AlignlensError("SumCount.update: x needs a batch dimension")
            rows = x
            feat = tuple(x.shape[1:])
        else:
            mask = _check_mask(mask, x.shape[: _as_tensor(mask).ndim], "SumCount.update")
            feat = tuple(x.shape[mask.ndim :])
            rows = x[mask.to(x.device)]
        self._ensure(feat)
        self.sum += rows.to(torch.float64).sum(dim=0).cpu()
        self.count += int(rows.shape[0])

    def _ensure(self, feat: tuple[int, ...]) -> None:
        if self.sum is None:
            self.sum = torch.zeros(feat, dtype=torch.float64)
        elif tuple(self.sum.shape) != feat:
            raise AlignlensError(f"SumCount: feature shape {feat} does not match {tuple(self.sum.shape)}")

    def merge(self, other: SumCount) -> SumCount:
        """Add another shard's sum and count into this one (in place); returns self."""
        if other.sum is None:
            return self
        self._ensure(tuple(other.sum.shape))
        self.sum += other.sum
        self.count += other.count
        return self

    def mean(self) -> torch.Tensor:
        """float64 [*feature]; raises if nothing was counted."""
        if self.sum is None or self.count == 0:
            raise AlignlensError("SumCount.mean: no rows were counted")
        return self.sum / self.count

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"sum": float64 [*feature], "count": int64 []}."""
        if self.sum is None:
            raise AlignlensError("SumCount.state_dict: empty reducer of unknown shape (pass feature_shape=)")
        return {"sum": self.sum.clone(), "count": torch.tensor(self.count, dtype=torch.int64)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> SumCount:
        out = cls(tuple(state["sum"].shape))
        out.sum = state["sum"].detach().to("cpu", torch.float64).clone()
        out.count = int(state["count"])
        return out


class ActivationCounter:
    """Per layer and MLP neuron, the number of (unmasked) tokens whose activation is > 0.

    ``acts`` are the post-nonlinearity activations (for gated MLPs, the gate's
    activation ``act_fn(gate)``, as Tang et al. 2024). ``counts`` int64 [n_layers, d_mlp];
    ``n_tokens`` int64 [n_layers] (tokens seen per layer; equal across layers once every
    layer has been updated on every batch).
    """

    def __init__(self, n_layers: int, d_mlp: int) -> None:
        self.counts = torch.zeros((n_layers, d_mlp), dtype=torch.int64)
        self.n_tokens_per_layer = torch.zeros(n_layers, dtype=torch.int64)

    @property
    def n_layers(self) -> int:
        return int(self.counts.shape[0])

    @property
    def d_mlp(self) -> int:
        return int(self.counts.shape[1])

    def update(self, layer: int, acts: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Count one layer's activations ``acts`` [batch, pos, d_mlp] at positions where ``mask`` [batch, pos] is True."""
        acts = _as_tensor(acts)
        if not 0 <= layer < self.n_layers:
            raise AlignlensError(f"ActivationCounter.update: layer {layer} out of range 0..{self.n_layers - 1}")
        if acts.ndim != 3 or acts.shape[-1] != self.d_mlp:
            raise AlignlensError(
                f"ActivationCounter.update: acts must be [batch, pos, {self.d_mlp}], got {tuple(acts.shape)}"
            )
        if mask is None:
            mask = torch.ones(acts.shape[:2], dtype=torch.bool, device=acts.device)
        mask = _check_mask(mask, acts.shape[:2], "ActivationCounter.update").to(acts.device)
        fired = (acts > 0) & mask.unsqueeze(-1)
        self.counts[layer] += fired.sum(dim=(0, 1), dtype=torch.int64).cpu()
        self.n_tokens_per_layer[layer] += int(mask.sum())

    @property
    def n_tokens(self) -> int:
        """Number of tokens counted (the same for all layers; raises otherwise)."""
        n = self.n_tokens_per_layer
        if not bool((n == n[0]).all()):
            raise AlignlensError(f"ActivationCounter: layers saw different token counts {n.tolist()}")
        return int(n[0])

    def probability(self) -> torch.Tensor:
        """Activation probability float64 [n_layers, d_mlp] = counts / n_tokens."""
        if int(self.n_tokens_per_layer.min()) == 0:
            raise AlignlensError("ActivationCounter.probability: some layer counted no tokens")
        return self.counts.to(torch.float64) / self.n_tokens_per_layer.to(torch.float64).unsqueeze(-1)

    def merge(self, other: ActivationCounter) -> ActivationCounter:
        """Add another shard's counts (in place); returns self."""
        if other.counts.shape != self.counts.shape:
            raise AlignlensError(
                f"ActivationCounter.merge: shapes differ {tuple(self.counts.shape)} vs {tuple(other.counts.shape)}"
            )
        self.counts += other.counts
        self.n_tokens_per_layer += other.n_tokens_per_layer
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"counts": int64 [n_layers, d_mlp], "n_tokens": int64 [n_layers]}."""
        return {"counts": self.counts.clone(), "n_tokens": self.n_tokens_per_layer.clone()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> ActivationCounter:
        counts = state["counts"]
        out = cls(int(counts.shape[0]), int(counts.shape[1]))
        out.counts = counts.detach().to("cpu", torch.int64).clone()
        n = state["n_tokens"].detach().to("cpu", torch.int64)
        out.n_tokens_per_layer = (n.expand(out.n_layers) if n.ndim == 0 else n).clone()
        return out


class RowStore:
    """Per-item rows (e.g. last-token states [n_layers, d_model]) keyed by item index.

    ``update(indices [batch] int, rows [batch, *row])``; an index may be stored only once
    (merging overlapping shards raises). ``to_tensor()`` stacks rows sorted by index.
    ``dtype`` (optional) casts rows on the way in, e.g. bf16 activations to float32.
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype
        self._rows: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def update(self, indices: Sequence[int] | torch.Tensor, rows: torch.Tensor) -> None:
        """Store ``rows[k]`` under item index ``indices[k]``."""
        rows = _as_tensor(rows)
        idx = [int(i) for i in _as_tensor(indices).reshape(-1).tolist()]
        if len(idx) != rows.shape[0]:
            raise AlignlensError(f"RowStore.update: {len(idx)} indices for {rows.shape[0]} rows")
        if len(set(idx)) != len(idx):
            raise AlignlensError("RowStore.update: duplicate item indices in one batch")
        rows = rows.cpu() if self.dtype is None else rows.to("cpu", self.dtype)
        for i, row in zip(idx, rows):
            self._put(i, row.clone())

    def _put(self, i: int, row: torch.Tensor) -> None:
        if i in self._rows:
            raise AlignlensError(f"RowStore: item index {i} stored twice")
        if self._rows:
            ref = next(iter(self._rows.values()))
            if row.shape != ref.shape:
                raise AlignlensError(f"RowStore: row shape {tuple(row.shape)} does not match {tuple(ref.shape)}")
        self._rows[i] = row

    def merge(self, other: RowStore) -> RowStore:
        """Union with another shard's rows (in place; indices must be disjoint); returns self."""
        for i, row in other._rows.items():
            self._put(i, row)
        return self

    def indices(self) -> torch.Tensor:
        """int64 [n] sorted item indices."""
        return torch.tensor(sorted(self._rows), dtype=torch.int64)

    def to_tensor(self, expect_n: int | None = None) -> torch.Tensor:
        """[n, *row] rows sorted by item index; with ``expect_n``, require indices exactly 0..expect_n-1."""
        if not self._rows:
            raise AlignlensError("RowStore.to_tensor: no rows stored")
        keys = sorted(self._rows)
        if expect_n is not None and keys != list(range(expect_n)):
            missing = sorted(set(range(expect_n)) - set(keys))[:5]
            raise AlignlensError(
                f"RowStore: expected items 0..{expect_n - 1}, have {len(keys)} (first missing: {missing})"
            )
        return torch.stack([self._rows[k] for k in keys])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"index": int64 [n] sorted, "rows": [n, *row]} (empty store: zero-length tensors)."""
        if not self._rows:
            return {"index": torch.zeros(0, dtype=torch.int64), "rows": torch.zeros(0)}
        return {"index": self.indices(), "rows": self.to_tensor()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> RowStore:
        out = cls(dtype)
        if state["index"].numel():
            out.update(state["index"], state["rows"])
        return out
