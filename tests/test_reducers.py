from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from alignlens import AlignlensError
from alignlens.capture.reducers import ActivationCounter, RowStore, SumCount


def _batches(n: int, sizes: list[int]):
    start = 0
    for s in sizes:
        yield slice(start, start + s)
        start += s
    assert start == n


@pytest.fixture
def padded():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 7, 5, generator=g, dtype=torch.float32)
    lengths = torch.tensor([7, 3, 5, 1, 7, 2, 6, 4, 7, 3])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    x_padded = x.clone()
    x_padded[~mask] = 1e6  # padding garbage that must never be counted
    return x, x_padded, mask


def test_sumcount_batches_with_mask_equal_one_shot(padded):
    x, x_padded, mask = padded
    r = SumCount()
    for sl in _batches(10, [3, 4, 3]):
        r.update(x_padded[sl], mask[sl])
    xn, mn = x.double().numpy(), mask.numpy()
    expected = xn[mn].mean(axis=0)  # direct numpy over the real tokens only
    assert r.count == int(mn.sum())
    np.testing.assert_allclose(r.mean().numpy(), expected, rtol=1e-12, atol=1e-12)
    assert r.mean().dtype == torch.float64


def test_sumcount_without_mask_reduces_dim0():
    x = np.random.default_rng(1).normal(size=(8, 3, 2))
    r = SumCount()
    r.update(torch.from_numpy(x[:5]))
    r.update(torch.from_numpy(x[5:]))
    assert r.count == 8
    np.testing.assert_allclose(r.mean().numpy(), x.mean(axis=0), rtol=1e-12)


def test_sumcount_merge_and_state_sum_equal_one_pass(padded):
    _, x_padded, mask = padded
    full = SumCount()
    full.update(x_padded, mask)
    a, b = SumCount(), SumCount()
    a.update(x_padded[:6], mask[:6])
    b.update(x_padded[6:], mask[6:])
    merged = SumCount.from_state_dict(a.state_dict()).merge(SumCount.from_state_dict(b.state_dict()))
    torch.testing.assert_close(merged.mean(), full.mean(), rtol=1e-12, atol=1e-12)
    assert merged.count == full.count
    # all_reduce(SUM) on each state tensor is also a valid merge
    sa, sb = a.state_dict(), b.state_dict()
    summed = SumCount.from_state_dict({k: sa[k] + sb[k] for k in sa})
    torch.testing.assert_close(summed.mean(), full.mean(), rtol=1e-12, atol=1e-12)


def test_sumcount_empty_shard_with_shape_merges():
    a = SumCount(feature_shape=(3,))
    b = SumCount()
    b.update(torch.ones(2, 3))
    a.merge(b)
    assert a.count == 2
    torch.testing.assert_close(a.mean(), torch.ones(3, dtype=torch.float64))
    with pytest.raises(AlignlensError):
        SumCount().state_dict()
    with pytest.raises(AlignlensError):
        SumCount(feature_shape=(3,)).mean()
    with pytest.raises(AlignlensError):
        a.update(torch.ones(2, 4))


def _count_direct(acts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(acts.shape[-1], dtype=np.int64)
    for b in range(acts.shape[0]):
        for p in range(acts.shape[1]):
            if mask[b, p]:
                out += acts[b, p] > 0
    return out


def test_activation_counter_batches_equal_direct(padded):
    rng = np.random.default_rng(2)
    n_layers, d_mlp = 3, 6
    acts = rng.normal(size=(n_layers, 10, 7, d_mlp))
    _, _, mask = padded
    acts_padded = acts.copy()
    acts_padded[:, ~mask.numpy()] = 5.0  # padding would be counted as "fires" if it leaked in
    c = ActivationCounter(n_layers, d_mlp)
    for sl in _batches(10, [2, 5, 3]):
        for layer in range(n_layers):
            c.update(layer, torch.from_numpy(acts_padded[layer, sl]), mask[sl])
    for layer in range(n_layers):
        np.testing.assert_array_equal(c.counts[layer].numpy(), _count_direct(acts[layer], mask.numpy()))
    assert c.n_tokens == int(mask.sum())
    np.testing.assert_allclose(c.probability().numpy(), c.counts.numpy() / int(mask.sum()))


def test_activation_counter_merge_equals_one_pass(padded):
    rng = np.random.default_rng(3)
    acts = torch.from_numpy(rng.normal(size=(2, 10, 7, 4)))
    _, _, mask = padded
    full, a, b = ActivationCounter(2, 4), ActivationCounter(2, 4), ActivationCounter(2, 4)
    for layer in range(2):
        full.update(layer, acts[layer], mask)
        a.update(layer, acts[layer, :4], mask[:4])
        b.update(layer, acts[layer, 4:], mask[4:])
    merged = ActivationCounter.from_state_dict(a.state_dict()).merge(ActivationCounter.from_state_dict(b.state_dict()))
    assert torch.equal(merged.counts, full.counts)
    assert merged.n_tokens == full.n_tokens
    sa, sb = a.state_dict(), b.state_dict()
    summed = ActivationCounter.from_state_dict({k: sa[k] + sb[k] for k in sa})
    assert torch.equal(summed.counts, full.counts)


def test_activation_counter_errors():
    c = ActivationCounter(2, 3)
    c.update(0, torch.ones(1, 2, 3))
    with pytest.raises(AlignlensError):
        _ = c.n_tokens  # layer 1 never updated
    with pytest.raises(AlignlensError):
        c.update(2, torch.ones(1, 2, 3))
    with pytest.raises(AlignlensError):
        c.update(0, torch.ones(1, 2, 4))
    with pytest.raises(AlignlensError):
        c.update(0, torch.ones(1, 2, 3), torch.ones(1, 2))  # non-bool mask
    with pytest.raises(AlignlensError):
        c.merge(ActivationCounter(2, 4))


def test_rowstore_shards_merge_sorted():
    rng = np.random.default_rng(4)
    rows = torch.from_numpy(rng.normal(size=(9, 2, 3)))
    perm = rng.permutation(9)
    a, b = RowStore(), RowStore()
    a.update(torch.from_numpy(perm[:4]), rows[perm[:4]])
    b.update(perm[4:6].tolist(), rows[perm[4:6]])
    b.update(torch.from_numpy(perm[6:]), rows[perm[6:]])
    merged = RowStore.from_state_dict(a.state_dict()).merge(RowStore.from_state_dict(b.state_dict()))
    assert torch.equal(merged.to_tensor(expect_n=9), rows)
    assert merged.indices().tolist() == list(range(9))
    with pytest.raises(AlignlensError):
        a.to_tensor(expect_n=9)  # shard alone is incomplete
    with pytest.raises(AlignlensError):
        merged.merge(a)  # overlapping indices
    with pytest.raises(AlignlensError):
        RowStore().update([1, 1], rows[:2])


def test_rowstore_dtype_and_empty_state():
    s = RowStore(dtype=torch.float32)
    s.update([3], torch.ones(1, 2, dtype=torch.bfloat16))
    assert s.to_tensor().dtype == torch.float32
    empty = RowStore.from_state_dict(RowStore().state_dict())
    assert len(empty) == 0


# ---- the capture hooks' pooling under a device map --------------------------------------------


class _MixedDevices(TorchFunctionMode):
    """Records every torch call whose tensor arguments (0-dim ones aside) are on more than one device."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim() > 0}
        if len(devices) > 1:
            self.mixed.append(f"{getattr(func, '__name__', func)} on {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def test_capture_hooks_pool_on_each_activations_device(tiny_gemma):
    """With --device-map the blocks run on different devices: the capture hooks must pool each
    activation with a mask, indices and prefix sums on that activation's device. Here the batch's
    mask is on the CPU (the model input), the embedding and block 0 run on the CPU and block 1 on
    the meta device (torch refuses to combine meta and CPU tensors): the prefix pass and the batch's
    hooks run, no torch call gets tensors of two devices, each row's pooled states stay on its
    device, and the CPU rows equal a direct computation."""
    from alignlens import data
    from alignlens.capture.capturer import EMBED_HOOK, Capturer, resid_hook_name
    from alignlens.engine import SuffixBatch

    cap = Capturer(tiny_gemma, data.load_task("snli"), "de")
    names = [EMBED_HOOK] + [resid_hook_name(i) for i in range(cap.n_layers)]  # hidden-state rows 0..n_layers
    device = ["cpu"] * cap.n_layers + ["meta"]  # the last block on another device
    g = torch.Generator().manual_seed(0)
    k, n, pos, d = 4, 3, 5, cap.d_model
    prefix = [torch.randn(1, k, d, generator=g) for _ in names]
    xs = [torch.randn(n, pos, d, generator=g) for _ in names]
    mask = torch.arange(pos)[None] < torch.tensor([5, 2, 3])[:, None]
    batch = SuffixBatch([0, 1, 2], mask, mask.sum(1) - 1)
    mode = _MixedDevices()
    with mode:
        for name, fn in cap.prefix_hooks(k):
            r = names.index(name)
            fn(prefix[r].to(device[r]), SimpleNamespace(name=name))
        ran = []
        for name, fn in cap.hooks(batch):
            if name in names:
                r = names.index(name)
                fn(xs[r].to(device[r]), SimpleNamespace(name=name))
                ran.append(r)
    assert sorted(ran) == list(range(len(names))) and mode.mixed == []
    for r, dev in enumerate(device):
        pooled = cap._pooled[r]  # (last, query mean, prompt mean) of hidden-state row r
        assert [(t.device.type, tuple(t.shape), t.dtype) for t in pooled] == [(dev, (n, d), torch.float32)] * 3
        if dev == "cpu":
            x = xs[r].double()
            last = x[torch.arange(n), mask.sum(1) - 1]
            query = torch.stack([x[i][mask[i]].mean(0) for i in range(n)])
            prompt = torch.stack([(prefix[r][0].double().sum(0) + x[i][mask[i]].sum(0)) / (k + mask[i].sum())
                                  for i in range(n)])
            for got, want in zip(pooled, (last, query, prompt)):
                torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-6)
