"""Bootstrap machinery of the similarity measures: the resample plan and what is recomputed on it.

`bootstrap_counts` draws one plan of item multiplicities [B, n] shared by every language and run;
`_WeightedGram` / `_weighted_hsic` / `_cka_from` give the unbiased HSIC and debiased CKA of every
resample in closed form (a resample's duplicated items never pair with each other; with all
multiplicities 1 this is `measures.unbiased_hsic`); `_pc1_replicates` refits PC1 exactly on every
resample (LAPACK's top eigenpair of each replicate's covariance up to `PCA_BOOT_DIRECT_RANK` axes,
Davidson steps above); `_weighted_pearson` correlates the refitted scores; `bc_interval` turns
replicates into bias-corrected percentile intervals; `_encode` / `decode_replicates` store the
replicates' deviations in similarity.json (`REPLICATE_ENCODING`). Pure numpy/scipy on float64.
"""

from __future__ import annotations

import numpy as np

from alignlens import AlignlensError

#: Bootstrap replicates refit PC1 on the resampled items (`_pc1_replicates`). With at most
#: PCA_BOOT_DIRECT_RANK principal axes (r), every replicate's covariance [r, r] is formed and LAPACK's
#: dsyevr gives its top eigenpair (exact to rounding); above, Rayleigh-Ritz in the full sample's top
#: PCA_BOOT_SUBSPACE axes, then Davidson steps (residual directions) until the relative residual
#: ||C u - theta u|| / theta of every replicate is below PCA_BOOT_TOL (at most PCA_BOOT_ITERATIONS).
#: Measured (CPU ms per call, 1000 resamples, 1 thread, d_model 640; synthetic spectra: mean of a
#: decaying, a dominant-outlier and a flat one / Gemma-3-270m mean-pooled states with pseudo-languages:
#: mean of 5 layers x raw, drop-outliers, standardize):
#:   (P, n, r)       before: RR in 32 axes + Davidson    direct      Davidson, 8 axes
#:   (3, 12, 35)     167 / 170                            33 / 32     50 / 42
#:   (4, 12, 47)     208 / 220                            49 / 49     51 / 43
#:   (7, 12, 83)     220 / 230                           127 / 127    57 / 49
#:   (7, 60, 419)    676 / 322                             -          342 / 209
#: (8 axes: as fast as 12 or 16 and faster than 4 or 24 at r = 83 and 419.)
PCA_BOOT_DIRECT_RANK = 48
PCA_BOOT_SUBSPACE = 8
PCA_BOOT_TOL = 1e-6
PCA_BOOT_ITERATIONS = 40


#: How `bootstrap_counts` draws its resamples (recorded in similarity.json: runs pair up when equal).
BOOTSTRAP_GENERATOR = "numpy.random.default_rng(seed).integers(0, n_items, size=(n_resamples, n_items))"
REPLICATE_ENCODING = ("base64 of little-endian float16 [n_layers, n_resamples]: each replicate minus the "
                      "point estimate (NaN where undefined)")


class _WeightedGram:
    """A Gram matrix (zero diagonal) with its products by each resample's multiplicities w [B, n]."""

    def __init__(self, gram: np.ndarray, w: np.ndarray) -> None:
        self.k = np.array(gram, dtype=np.float64)
        np.fill_diagonal(self.k, 0.0)
        self.w = w
        self.w2 = w * w
        self.kw = w @ self.k  # [B, n]: (K w)_i (K symmetric)
        self.kw2 = self.w2 @ self.k
        self.self_hsic = _weighted_hsic(self, self)


def _weighted_hsic(a: _WeightedGram, b: _WeightedGram) -> np.ndarray:
    """Unbiased HSIC of Grams a.k, b.k on each bootstrap resample -> [B].

    A resample with multiplicities w (item i drawn w_i times) gives the U-statistic over the
    4-tuples of resampled rows that come from 4 distinct items (a duplicated item's copies never
    pair with each other: they would act as the diagonal the estimator leaves out):
    HSIC = (A + B - 2C) / N with, over distinct items, N = sum w_i w_j w_q w_r,
    A = sum w_i w_j w_q w_r K_ij L_ij, B = sum ... K_ij L_qr, C = sum ... K_ij L_iq, in closed form
    (power sums of w). With w = 1 this is `unbiased_hsic`."""
    w, w2 = a.w, a.w2
    w3 = w2 * w
    p1, p2, p3, p4 = w.sum(1), w2.sum(1), w3.sum(1), (w2 * w2).sum(1)
    pm = a.k * b.k
    pw, pw2 = w @ pm, w2 @ pm
    wpw, w2pw, w3pw, w2pw2 = (w * pw).sum(1), (w2 * pw).sum(1), (w3 * pw).sum(1), (w2 * pw2).sum(1)
    big_a = (p1**2 - p2) * wpw - 4 * p1 * w2pw + 4 * w3pw + 2 * w2pw2
    big_b = (w * a.kw).sum(1) * (w * b.kw).sum(1) - 4 * (w2 * a.kw * b.kw).sum(1) + 2 * w2pw2
    big_c = ((w * (p1[:, None] - w) * a.kw * b.kw).sum(1) - (w * a.kw2 * b.kw).sum(1) - (w * a.kw * b.kw2).sum(1)
             - p1 * w2pw + w2pw2 + 2 * w3pw)
    norm = p1**4 - 6 * p1**2 * p2 + 3 * p2**2 + 8 * p1 * p3 - 6 * p4  # sum over distinct 4-tuples
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (big_a + big_b - 2 * big_c) / np.where(norm > 0, norm, 1.0), np.nan)


def _cka_from(a: _WeightedGram, b: _WeightedGram) -> np.ndarray:
    hab = _weighted_hsic(a, b)
    den = a.self_hsic * b.self_hsic
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, hab / np.sqrt(np.where(den > 0, den, 1.0)), np.nan)


def _pc1_replicates(zf: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """PC1 of every bootstrap resample of the fit data (the exact top eigenvector, up to PCA_BOOT_TOL).

    zf [P, n, r]: coordinates of the P fit languages' items on the full sample's principal axes;
    w [B, n]: item multiplicities (each resampled item keeps its rows in every fit language). The
    resample's covariance is C = sum_rows omega z z' - zbar zbar' (omega = w / (P n)). Up to
    PCA_BOOT_DIRECT_RANK axes every C [r, r] is formed and its top eigenpair taken from LAPACK (exact
    to rounding); above, Rayleigh-Ritz in the top PCA_BOOT_SUBSPACE axes, then Davidson steps (each
    adds the orthogonalised residual C u - theta u to the replicate's subspace) until the replicate's
    relative residual is below PCA_BOOT_TOL. Returns (u [B, r] unit PC1 of each C, sign arbitrary;
    max relative residual ||C u - theta u|| / theta of the returned u, recomputed from zf)."""
    from scipy.linalg import lapack

    n_fit, n, r = zf.shape
    b_count = w.shape[0]
    m_tot = float(n_fit * n)
    zflat = zf.reshape(n_fit * n, r)
    zbar_all = (w @ zf.sum(axis=0)) / m_tot  # [B, r]

    def cmul(u: np.ndarray, idx: np.ndarray | slice) -> np.ndarray:  # C_b u_b, b in idx: [k, r] -> [k, r]
        omega = np.tile(w[idx].T, (n_fit, 1)) / m_tot
        zb = zbar_all[idx]
        return (zflat.T @ (omega * (zflat @ u.T))).T - zb * np.sum(zb * u, axis=1, keepdims=True)

    def relative_residual(res: np.ndarray, theta: np.ndarray) -> np.ndarray:  # ||res|| / |theta| [k] (0 for theta 0 or NaN)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(np.abs(theta) > 0, np.linalg.norm(res, axis=1) / np.abs(theta), 0.0)
        return np.nan_to_num(rel, nan=0.0)

    def item_products(k: int) -> np.ndarray:  # each item's sum_p z z'[:, :k], flattened: [n, r * k]
        return np.einsum("pir,pik->irk", zf, zf[:, :, :k]).reshape(n, r * k)

    def columns(q: np.ndarray, k: int, sl: slice) -> np.ndarray:  # the first k columns of C_b, b in sl: [b, r, k]
        return (w[sl] @ q).reshape(-1, r, k) / m_tot - zbar_all[sl, :, None] * zbar_all[sl, None, :k]

    def top(hs: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Top eigenpair of each hs[a] [A, m, m] (upper triangle read): eigenvalues [A]; unit vectors
        into out [A, m]. LAPACK dsyevr for the top pair only: 2-2.5x faster than a batched
        numpy.linalg.eigh from m = 20 (measured), the same at m = 8."""
        m = hs.shape[-1]
        vals = np.empty(len(hs))
        for a, x in enumerate(hs):
            ev, evec, _, _, info = lapack.dsyevr(x, range="I", il=m, iu=m)
            if info != 0:  # (not seen) divide and conquer instead
                ev, evec = np.linalg.eigh(np.triu(x) + np.triu(x, 1).T)
                ev, evec = ev[::-1], evec[:, ::-1]
            vals[a], out[a] = ev[0], evec[:, 0]
        return vals

    u = np.zeros((b_count, r))
    if r <= PCA_BOOT_DIRECT_RANK:
        q = item_products(r)
        theta = np.concatenate([top(columns(q, r, slice(s, s + 256)), u[s : s + 256])  # 256 replicates' C at a time
                                for s in range(0, b_count, 256)] or [np.zeros(0)])
    else:
        k = min(r, PCA_BOOT_SUBSPACE)
        ce = columns(item_products(k), k, slice(None))  # C e_j of the first k axes [B, r, k]
        h = np.zeros((b_count, k + PCA_BOOT_ITERATIONS, k + PCA_BOOT_ITERATIONS))  # projected C (upper triangle)
        h[:, :k, :k] = ce[:, :k]
        theta = top(h[:, :k, :k], u[:, :k])
        cu = (ce @ u[:, :k, None])[:, :, 0]  # C u, from the images of the subspace's vectors
        active = np.arange(b_count)  # the replicates of the rows below (converged ones are frozen, not updated)
        vb = np.empty((b_count, 4, r))  # Davidson directions [len(active), t, r] ...
        cb = np.empty((b_count, 4, r))  # ... and C times them (capacity doubled when full)
        for t in range(PCA_BOOT_ITERATIONS):  # t directions so far
            res = cu[active] - theta[active, None] * u[active]
            done = relative_residual(res, theta[active]) < PCA_BOOT_TOL
            if done.all() or k == r:
                break
            if done.sum() * 4 >= len(done):  # drop the converged rows once they are a quarter (fewer copies)
                keep = ~done
                active, res, ce, vb, cb, done = active[keep], res[keep], ce[keep], vb[keep], cb[keep], done[keep]
            qv = res
            qv[:, :k] = 0.0
            for _pass in range(2 if t else 0):  # Gram-Schmidt twice against the earlier directions
                qv -= (np.transpose(vb[:, :t] @ qv[:, :, None], (0, 2, 1)) @ vb[:, :t])[:, 0]
            nq = np.linalg.norm(qv, axis=1, keepdims=True)
            qv = np.where(nq > 1e-300, qv / np.where(nq > 1e-300, nq, 1.0), 0.0)
            if t == vb.shape[1]:
                vb, cb = (np.concatenate([x, np.empty_like(x)], axis=1) for x in (vb, cb))
            vb[:, t], cb[:, t] = qv, cmul(qv, active)
            j = k + t  # the new direction's column of h
            h[active, :k, j] = cb[:, t, :k]
            h[active, k : j + 1, j] = (vb[:, : t + 1] @ cb[:, t, :, None])[:, :, 0]
            coef = np.empty((len(active), j + 1))
            vals = top(h[active, : j + 1, : j + 1], coef)
            ua = (coef[:, None, k:] @ vb[:, : t + 1])[:, 0]
            ua[:, :k] += coef[:, :k]
            cua = (coef[:, None, k:] @ cb[:, : t + 1])[:, 0] + (ce @ coef[:, :k, None])[:, :, 0]
            upd = ~done
            theta[active[upd]], u[active[upd]], cu[active[upd]] = vals[upd], ua[upd], cua[upd]
    rel = relative_residual(cmul(u, slice(None)) - theta[:, None] * u, theta)
    return u, float(rel.max()) if rel.size else 0.0


def bootstrap_counts(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """Multiplicities [n_resamples, n_items] (float64) of `BOOTSTRAP_GENERATOR`'s resamples of item
    indices. The same item indices are resampled in every language (paired), and two runs with the
    same seed, n_items and n_resamples resample identically (so their replicates pair up)."""
    idx = np.random.default_rng(seed).integers(0, n_items, size=(n_resamples, n_items))
    counts = np.zeros((n_resamples, n_items))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n_items), idx.reshape(-1)), 1.0)
    return counts


def _weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of a[r], b[r] [R, n] with multiplicities w [R, n] -> [R] (NaN when a variance is 0)."""
    tot = w.sum(1, keepdims=True)
    a = a - (w * a).sum(1, keepdims=True) / tot
    b = b - (w * b).sum(1, keepdims=True) / tot
    cov, va, vb = (w * a * b).sum(1), (w * a * a).sum(1), (w * b * b).sum(1)
    scale = np.maximum((w * (a * a + b * b)).sum(1), 1e-300)
    ok = (va > 1e-24 * scale) & (vb > 1e-24 * scale)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, np.clip(cov / np.sqrt(np.where(ok, va * vb, 1.0)), -1.0, 1.0), np.nan)


def _encode(dev: np.ndarray) -> str:
    import base64

    return base64.b64encode(np.ascontiguousarray(dev, dtype="<f2").tobytes()).decode("ascii")


def decode_replicates(text: str, n_layers: int, n_resamples: int) -> np.ndarray:
    """Inverse of the replicate encoding (`REPLICATE_ENCODING`): deviations float64 [n_layers, n_resamples]."""
    import base64

    raw = base64.b64decode(text.encode("ascii"))
    if len(raw) != 2 * n_layers * n_resamples:
        raise AlignlensError(f"bootstrap replicates: {len(raw)} bytes, expected {2 * n_layers * n_resamples} "
                             f"({n_layers} layers x {n_resamples} resamples, float16)")
    return np.frombuffer(raw, dtype="<f2").astype(np.float64).reshape(n_layers, n_resamples)


def bc_interval(reps: np.ndarray, est: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected percentile bootstrap interval (Efron 1987, "BC") per row of ``reps`` [L, B]
    around the estimates ``est`` [L], ignoring NaN replicates (NaN where a row has none or its
    estimate is NaN).

    z0 = Phi^-1(share of replicates below the estimate, ties counting half), and the interval is the
    replicates' quantiles at Phi(2 z0 -+ z_(1+level)/2). With z0 = 0 (replicates centred on the
    estimate) it is the plain percentile interval; it moves with the replicates' bias (duplicated
    items shift a refitted PC1's correlations upward, so plain percentile intervals can lie wholly
    above the estimate); it contains the estimate unless fewer than (1 - level) / 2 of the replicates
    fall on one side of it."""
    from scipy.stats import norm

    reps, est = np.atleast_2d(reps), np.atleast_1d(np.asarray(est, dtype=np.float64))
    z = norm.ppf((1 + level) / 2)
    out = np.full((2, reps.shape[0]), np.nan)
    for i, row in enumerate(reps):
        row = row[np.isfinite(row)]
        if not row.size or not np.isfinite(est[i]):
            continue
        share = (np.sum(row < est[i]) + 0.5 * np.sum(row == est[i])) / row.size
        z0 = norm.ppf(np.clip(share, 0.5 / row.size, 1 - 0.5 / row.size))
        out[:, i] = np.quantile(row, norm.cdf([2 * z0 - z, 2 * z0 + z]))
    return out[0], out[1]
