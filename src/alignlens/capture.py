"""One forward pass feeds every analysis: hooks on exactly the activations needed, reduced on the fly.

For each (task, language), while the evaluation scores the queries (see `evaluate.score_prompts`;
the few-shot prefix comes from the KV cache, so hooks see the query tokens only), TransformerLens
hooks read:

- `blocks.{l}.hook_resid_post` [batch, pos, d_model]: the residual stream after each block, kept
  at the last query position and mean-pooled over the item's own (query) tokens;
- `blocks.{l}.mlp.hook_pre` [batch, pos, d_mlp]: the MLP pre-activation (for gated MLPs, the
  gate's), counted where > 0. GELU, SiLU and ReLU are positive exactly where their input is,
  so this counts the tokens whose activation after the nonlinearity is > 0.

After each batch the last-position states go through the logit lens (final norm + unembedding
at every layer), reduced to label-word probabilities and entropy. Padding never enters a
statistic. Everything kept is a mergeable reducer (`alignlens.reducers`), so shards from
several processes merge exactly; `save_shard`/`load_shard` write them to safetensors.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlens import AlignlensError, data
from alignlens.evaluate import LanguageResult, SuffixBatch, label_token_ids, nonfinite_error
from alignlens.lens import LensCapture, lens_label_probs
from alignlens.model import LoadedModel
from alignlens.reducers import ActivationCounter, RowStore

#: Activation functions whose output is > 0 exactly where their input is > 0.
SIGN_PRESERVING = ("gelu", "silu", "swish", "relu")


def resid_hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def mlp_hook_name(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_pre"


def check_neuron_hooks(model: LoadedModel) -> None:
    """The neuron statistic is only meaningful for sign-preserving activations."""
    act = str(getattr(model.bridge.cfg, "act_fn", "") or "").lower()
    if act and not any(k in act for k in SIGN_PRESERVING):
        raise AlignlensError(f"neuron analysis needs a GELU/SiLU/ReLU MLP; this model uses {act!r}")
    missing = [mlp_hook_name(i) for i in range(model.n_layers) if mlp_hook_name(i) not in model.bridge.hook_dict]
    if missing:
        raise AlignlensError(f"this model has no hook {missing[0]} for the neuron analysis")


@dataclass
class LanguageCapture:
    """Reduced captures of one task in one language; rows keyed by position in the item list.

    last, mean: [n_items, n_layers, d_model]; p_en, p_target: [n_items, n_layers, n_labels];
    entropy: [n_items, n_layers] (bits); neurons: counts [n_layers, d_mlp] of tokens with
    activation > 0, and the number of tokens.
    """

    task: str
    lang: str
    last: RowStore
    mean: RowStore
    p_en: RowStore
    p_target: RowStore
    entropy: RowStore
    neurons: ActivationCounter
    overlap: torch.Tensor  # [n_labels] bool: English and target token sets share a token

    @classmethod
    def empty(cls, task: str, lang: str, n_layers: int, d_mlp: int, overlap: torch.Tensor) -> "LanguageCapture":
        f32 = torch.float32
        return cls(task, lang, RowStore(f32), RowStore(f32), RowStore(f32), RowStore(f32), RowStore(f32),
                   ActivationCounter(n_layers, d_mlp), overlap)

    def lens(self, gold: list[int]) -> LensCapture:
        n = len(gold)
        return LensCapture(self.p_en.to_tensor(n), self.p_target.to_tensor(n), self.entropy.to_tensor(n),
                           torch.tensor(gold), self.overlap)


LENS_OVERLAP_RULES = ("token-set", "first-token")


def first_tokens(tokenizer, word: str) -> set[int]:
    """First token of `word` as the tokenizer encodes it, standing alone and after a space."""
    out = set()
    for text in (word, " " + word):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids:
            out.add(ids[0])
    return out


def label_overlap(tokenizer, labels, words, sets_en, sets_target, rule: str = "token-set") -> list[bool]:
    """Per label: do its English and target-language words collide, so the lens cannot tell them apart?

    `token-set`: their token sets (every prefix token, see `evaluate.label_token_ids`) share a token;
    strict: words starting with the same letter collide. `first-token`: their first tokens as the
    tokenizer encodes them are the same (Wendler et al. 2024's rule).
    """
    if rule == "token-set":
        return [bool(set(a) & set(b)) for a, b in zip(sets_en, sets_target)]
    if rule == "first-token":
        return [bool(first_tokens(tokenizer, e) & first_tokens(tokenizer, t)) for e, t in zip(labels, words)]
    raise AlignlensError(f"unknown lens overlap rule {rule!r} (use {', '.join(LENS_OVERLAP_RULES)})")


class Capturer:
    """Hooks and after-batch reduction for one task and language (pass its methods to
    `evaluate.evaluate_language(..., batch_hooks=c.batch_hooks, after_batch=c.after_batch)`)."""

    def __init__(self, model: LoadedModel, spec: data.TaskSpec, lang: str, lens_overlap: str = "token-set") -> None:
        self.model = model
        self.n_layers, self.d_model, self.d_mlp = model.n_layers, model.d_model, model.d_mlp
        tok = model.tokenizer
        self.where = f"task {spec.name}, language {lang}"
        self.sets_en = [label_token_ids(tok, w, f"{self.where}, label {w!r}") for w in spec.labels]
        words = spec.prompts[lang].label_words
        self.sets_target = [label_token_ids(tok, words.get(w, w), f"{self.where}, label {w!r} (word {words.get(w, w)!r})")
                            for w in spec.labels]
        overlap = torch.tensor(label_overlap(tok, spec.labels, [words.get(w, w) for w in spec.labels],
                                             self.sets_en, self.sets_target, lens_overlap))
        self.capture = LanguageCapture.empty(spec.name, lang, self.n_layers, self.d_mlp, overlap)
        self._last: torch.Tensor | None = None
        self._mean: torch.Tensor | None = None

    def batch_hooks(self, batch: SuffixBatch) -> list:
        n = len(batch.rows)
        dev = batch.mask.device
        self._last = torch.zeros(n, self.n_layers, self.d_model, dtype=torch.float32, device=dev)
        self._mean = torch.zeros_like(self._last)
        mask = batch.mask
        rows = torch.arange(n, device=dev)
        counts = mask.sum(1, keepdim=True).float()

        def resid(x: torch.Tensor, hook) -> torch.Tensor:
            layer = int(hook.name.split(".")[1])
            self._last[:, layer] = x[rows, batch.last].float()
            # where, not a product: a NaN at a padding position must not reach a real row's mean
            self._mean[:, layer] = torch.where(mask.unsqueeze(-1), x.float(), 0.0).sum(1) / counts
            return x

        def mlp(x: torch.Tensor, hook) -> torch.Tensor:
            if x.shape[-1] != self.d_mlp:
                raise AlignlensError(f"{hook.name}: last dim {x.shape[-1]} is not d_mlp={self.d_mlp}")
            self.capture.neurons.update(int(hook.name.split(".")[1]), x, mask)  # counts x > 0 where mask
            return x

        hooks = [(resid_hook_name(i), resid) for i in range(self.n_layers)]
        hooks += [(mlp_hook_name(i), mlp) for i in range(self.n_layers)]
        return hooks

    def after_batch(self, batch: SuffixBatch) -> None:
        """Store the batch's states and lens values; NumericalError (naming task, language and
        items) if any of them is NaN/inf."""
        c = self.capture
        self._check(batch, "residual-stream activations", self._last, self._mean)
        p_en, p_tg, ent = lens_label_probs(self.model, self._last.to(self.model.dtype), self.sets_en, self.sets_target)
        self._check(batch, "logit-lens values", p_en, p_tg, ent)
        c.last.update(batch.rows, self._last.cpu())
        c.mean.update(batch.rows, self._mean.cpu())
        c.p_en.update(batch.rows, p_en)
        c.p_target.update(batch.rows, p_tg)
        c.entropy.update(batch.rows, ent)
        self._last = self._mean = None

    def _check(self, batch: SuffixBatch, what: str, *tensors: torch.Tensor) -> None:
        """Raise NumericalError naming the rows (item ids) where any tensor [batch, ...] is not finite."""
        bad = torch.zeros(len(batch.rows), dtype=torch.bool)
        for t in tensors:
            bad |= ~torch.isfinite(t).reshape(len(batch.rows), -1).all(dim=1).cpu()
        if bool(bad.any()):
            ids = batch.ids or batch.rows
            raise nonfinite_error(what, self.where, [ids[i] for i in bad.nonzero().flatten().tolist()], self.model.dtype)


# ---- shards ---------------------------------------------------------------------------------


def shard_path(folder: Path, task: str, lang: str) -> Path:
    return Path(folder) / f"{task}__{lang}.safetensors"


def save_shard(folder: Path, result: LanguageResult, cap: LanguageCapture) -> Path:
    """Write one (task, language)'s eval result and reduced captures atomically to safetensors."""
    from safetensors.torch import save_file

    n = len(result.indices)
    tensors = {
        "probs": torch.as_tensor(result.probs, dtype=torch.float64), "gold": torch.tensor(result.gold),
        "indices": torch.tensor(result.indices), "last": cap.last.to_tensor(n), "mean": cap.mean.to_tensor(n),
        "p_en": cap.p_en.to_tensor(n), "p_target": cap.p_target.to_tensor(n), "entropy": cap.entropy.to_tensor(n),
        "neuron_counts": cap.neurons.counts, "neuron_tokens": cap.neurons.n_tokens_per_layer,
        "overlap": cap.overlap.to(torch.uint8),
    }
    meta = {"task": result.task, "lang": result.lang, "labels": json.dumps(result.labels, ensure_ascii=False)}
    path = shard_path(folder, result.task, result.lang)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load_shard(path: Path) -> tuple[LanguageResult, LanguageCapture]:
    """Inverse of `save_shard`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        t = {k: fh.get_tensor(k) for k in fh.keys()}
    rows = list(range(len(t["indices"])))
    result = LanguageResult(meta["task"], meta["lang"], json.loads(meta["labels"]), t["indices"].tolist(),
                            t["gold"].tolist(), t["probs"].numpy())
    n_layers, d_mlp = t["neuron_counts"].shape
    cap = LanguageCapture.empty(meta["task"], meta["lang"], n_layers, d_mlp, t["overlap"].bool())
    for name in ("last", "mean", "p_en", "p_target", "entropy"):
        getattr(cap, name).update(rows, t[name])
    cap.neurons.counts = t["neuron_counts"].clone()
    cap.neurons.n_tokens_per_layer = t["neuron_tokens"].clone()
    return result, cap
