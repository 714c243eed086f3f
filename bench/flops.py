"""FLOP counts and the machine's measured GEMM peak, so every benchmark can print its distance to
the limit: achieved GFLOP/s = counted FLOPs / seconds, efficiency = achieved / peak.

Counting convention (forward pass, multiply-add = 2 FLOPs, attention scores and softmax ignored,
which is small at these lengths): a token through the decoder body costs 2 x (non-embedding
parameters); a position through the LM head costs 2 x d_model x vocabulary. Backward costs twice
the forward (so a training step costs 3x its forward).
"""

from __future__ import annotations

import statistics
import time

import torch

from alignlens import data
from alignlens.engine import cached_lengths, encode
from alignlens.evaluate import content_free_queries


def gemm_peak_gflops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Measured fp32 matmul rate (GFLOP/s) of this machine with the current torch thread count:
    the median of `repeats` timed n x n @ n x n products after a warm-up."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def body_flops_per_token(hf_model: torch.nn.Module) -> float:
    """2 x the decoder's non-embedding parameters (input embeddings and LM head excluded)."""
    emb = hf_model.get_input_embeddings().weight
    head = hf_model.get_output_embeddings().weight
    skip = {id(emb), id(head)}
    n = sum(p.numel() for p in hf_model.parameters() if id(p) not in skip)
    return 2.0 * n


def head_flops_per_position(hf_model: torch.nn.Module) -> float:
    """2 x d_model x vocabulary: one position through the LM head."""
    return 2.0 * hf_model.get_output_embeddings().weight.numel()


def describe(label: str, flops: float, seconds: float, peak: float, n_items: int) -> str:
    """'label: X GFLOP/item, Y GFLOP/s achieved = Z% of the measured GEMM peak'."""
    rate = flops / seconds / 1e9
    return (f"{label}: {flops / n_items / 1e9:.2f} GFLOP/item, {rate:.1f} GFLOP/s achieved = "
            f"{100 * rate / peak:.0f}% of the GEMM peak ({peak:.1f} GFLOP/s)")


def scoring_flops(model, spec: data.TaskSpec, lang: str, items: list[data.Item], *, probed: bool,
                  calibrate: bool, lens_layers: int = 0) -> float:
    """FLOPs of one `engine.score_prompts` call on `items` of (spec, lang): the cached prefix once
    through the body (`engine.cached_lengths`: with probes the few-shot prefix's tokens, else every
    token all prompts share; a second, shorter prefix for the content-free queries when they
    tokenize its end differently), each prompt's suffix through the body and its last position
    through the head (plus `lens_layers` lens positions per item); with `calibrate`, the 3
    content-free queries too."""
    fb, fh = body_flops_per_token(model.hf_model), head_flops_per_position(model.hf_model)
    tok, prefix = model.tokenizer, data.prompt_prefix(spec, lang)
    full = encode(tok, [data.build_prompt(spec, lang, it) for it in items])
    extra = encode(tok, [prefix + q for q in content_free_queries(spec, lang)]) if calibrate else []
    k, k_u = cached_lengths(encode(tok, [prefix])[0] if probed else None, full + extra, len(full))
    return (k * fb + (k_u * fb if extra and k_u != k else 0.0)
            + sum((len(p) - k) * fb + fh + lens_layers * fh for p in full)
            + sum((len(p) - k_u) * fb + fh for p in extra))
