"""The capture probe: hooks on exactly the activations the analyses need, reduced on the fly.

For each (task, language), while the evaluation scores the queries (see `engine.score_prompts`;
the few-shot prefix is encoded once and comes from the KV cache for every batch), TransformerLens
hooks read:

- `blocks.0.hook_resid_pre` (the embedding output, with Gemma's sqrt(d_model) scaling and GPT-2's
  position embeddings: HF `hidden_states[0]`) and `blocks.{l}.hook_resid_post` [batch, pos,
  d_model] (the residual stream after each block: HF `hidden_states[l + 1]`, except that HF's last
  entry is after the final norm), kept at the last prompt position, mean-pooled over the item's own
  (query) tokens, and mean-pooled over all prompt tokens (BOS and demonstrations included, as the
  paper's `knowledge_finding.ipynb`). The prompt mean needs the shared prefix: its states are the
  same for every item, so the probe reads them once from the prefix pass (`prefix_hooks`) and
  combines (prefix_sum + query_sum) / (k + m) for k prefix and m query tokens (float64 sums);
- `blocks.{l}.mlp.hook_pre` [batch, pos, d_mlp]: the MLP pre-activation (for gated MLPs, the
  gate's), counted where > 0. GELU, SiLU and ReLU are positive exactly where their input is,
  so this counts the tokens whose activation after the nonlinearity is > 0.

After each batch the last-position states go through the logit lens (final norm + unembedding
at every layer), reduced to label-word probabilities (each label's English and target-language
token sets, and the union of all labels' sets of each) and entropy. Which prompts the pass runs
on (target-language or English label words in the demonstrations) is the caller's choice
(`pipeline.capture_run`); the capture records it (`LanguageCapture.prompts`). Padding never enters a
statistic. Everything kept is a reducer (`alignlens.capture.reducers`), so shards from several
processes can be combined (`alignlens.capture.shards` writes and reads them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import math

import torch

from alignlens import AlignlensError, data
from alignlens.capture.reducers import ActivationCounter, RowStore
from alignlens.config import SIMILARITY_POOLINGS
from alignlens.engine import Hook, SuffixBatch, Unembed, nonfinite_error
from alignlens.labels import label_overlap, label_sets, label_token_ids
from alignlens.lens import LensCapture
from alignlens.model import LoadedModel

#: Activation functions whose output is > 0 exactly where their input is > 0.
SIGN_PRESERVING = ("gelu", "silu", "swish", "relu")


def resid_hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def mlp_hook_name(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_pre"


#: The embedding output (row 0 of the similarity states): the input of the first block.
EMBED_HOOK = "blocks.0.hook_resid_pre"
#: Pooling of the states for the similarity analysis (`LanguageCapture.pooled`).
POOLINGS = SIMILARITY_POOLINGS
#: The order of the embedding output's pooled rows in `LanguageCapture.embed`.
EMBED_ROWS = ("last", "query", "prompt")


def check_neuron_hooks(model: LoadedModel) -> None:
    """The neuron statistic is only meaningful for sign-preserving activations."""
    act = str(getattr(model.bridge.cfg, "act_fn", "") or "").lower()
    if act and not any(k in act for k in SIGN_PRESERVING):
        raise AlignlensError(f"neuron analysis needs a GELU/SiLU/ReLU MLP; this model uses {act!r}")
    missing = [mlp_hook_name(i) for i in range(model.n_layers) if mlp_hook_name(i) not in model.bridge.hook_dict]
    if missing:
        raise AlignlensError(f"this model has no hook {missing[0]} for the neuron analysis")


class LensValues(NamedTuple):
    """Lens values of a batch, float32 on CPU: p_en, p_target [batch, n_layers, n_labels] (each
    label's English / target token set); p_en_all, p_target_all [batch, n_layers] (the union of
    all labels' English / target sets, each token once); entropy_bits [batch, n_layers]."""

    p_en: torch.Tensor
    p_target: torch.Tensor
    p_en_all: torch.Tensor
    p_target_all: torch.Tensor
    entropy_bits: torch.Tensor


@torch.no_grad()
def lens_label_probs(
    model: LoadedModel, resid: torch.Tensor, label_sets_en: list[list[int]], label_sets_target: list[list[int]]
) -> LensValues:
    """Logit lens at every layer: the model's unembedding (`engine.Unembed`: final norm, LM head,
    final soft-capping where the model has one) applied to residual states.

    resid: [batch, n_layers, d_model] (residual stream after each block, last position).
    Returns `LensValues` (probabilities of the label token sets and of their unions, entropy in
    bits). At the last layer this equals the model's own next-token distribution.
    """
    logits = Unembed.from_hf(model.hf_model)(resid).float()
    # Three passes over the vocabulary instead of log_softmax + exp + product temporaries:
    # H = logsumexp(z) - E_p[z], p = exp(z - max) / sum.
    top = logits.amax(dim=-1, keepdim=True)
    unnorm = torch.exp(logits - top)
    total = unnorm.sum(dim=-1, keepdim=True)
    mean_logit = torch.linalg.vecdot(unnorm, logits).unsqueeze(-1) / total
    ent = ((top + total.log() - mean_logit) / math.log(2.0)).squeeze(-1)
    p_en = torch.stack([unnorm[..., s].sum(-1) for s in label_sets_en], dim=-1) / total
    p_tg = torch.stack([unnorm[..., s].sum(-1) for s in label_sets_target], dim=-1) / total
    union_en = sorted({t for s in label_sets_en for t in s})
    union_tg = sorted({t for s in label_sets_target for t in s})
    p_en_all = unnorm[..., union_en].sum(-1) / total.squeeze(-1)
    p_tg_all = unnorm[..., union_tg].sum(-1) / total.squeeze(-1)
    return LensValues(p_en.cpu(), p_tg.cpu(), p_en_all.cpu(), p_tg_all.cpu(), ent.clamp_min(0.0).cpu())


@dataclass
class LanguageCapture:
    """Reduced captures of one task in one language; rows keyed by position in the item list.

    last, mean: [n_items, n_layers, d_model]; p_en, p_target: [n_items, n_layers, n_labels];
    p_en_all, p_target_all: [n_items, n_layers] (union of all labels' sets; empty for shards of
    older runs); entropy: [n_items, n_layers] (bits); neurons: counts [n_layers, d_mlp] of tokens
    with activation > 0, and the number of tokens. `prompts`: the prompts captured
    ("target-labels" or "english-labels", `config.LENS_PROMPTS`).
    Similarity states (`pooled`; empty for shards of older runs): embed [n_items, 3, d_model], the
    embedding output at the last position, its query mean and its prompt mean; prompt
    [n_items, n_layers, d_model], each block's output mean-pooled over all prompt tokens.
    """

    task: str
    lang: str
    last: RowStore
    mean: RowStore
    p_en: RowStore
    p_target: RowStore
    entropy: RowStore
    neurons: ActivationCounter
    overlap: torch.Tensor  # [n_labels] bool: English and target words collide (the lens overlap rule)
    p_en_all: RowStore | None = None
    p_target_all: RowStore | None = None
    prompts: str = "english-labels"
    embed: RowStore = field(default_factory=lambda: RowStore(torch.float32))
    prompt: RowStore = field(default_factory=lambda: RowStore(torch.float32))

    @classmethod
    def empty(cls, task: str, lang: str, n_layers: int, d_mlp: int, overlap: torch.Tensor,
              prompts: str = "english-labels") -> "LanguageCapture":
        f32 = torch.float32
        return cls(task, lang, RowStore(f32), RowStore(f32), RowStore(f32), RowStore(f32), RowStore(f32),
                   ActivationCounter(n_layers, d_mlp), overlap, RowStore(f32), RowStore(f32), prompts)

    def lens(self, gold: list[int]) -> LensCapture:
        n = len(gold)
        sums = [s.to_tensor(n) if s is not None and len(s) else None for s in (self.p_en_all, self.p_target_all)]
        return LensCapture(self.p_en.to_tensor(n), self.p_target.to_tensor(n), self.entropy.to_tensor(n),
                           torch.tensor(gold), self.overlap, *sums)

    def pooled(self, pooling: str) -> torch.Tensor:
        """States for the similarity analysis, float32 [n_items, n_layers + 1, d_model]: row 0 the
        embedding output, row l + 1 block l's output (before the final norm), pooled as `pooling`:
        "prompt" (mean over all prompt tokens, the paper's), "query" (mean over the item's own
        tokens after the shared few-shot prefix) or "last" (the last prompt token)."""
        if pooling not in POOLINGS:
            raise AlignlensError(f"unknown similarity pooling {pooling!r} (use {', '.join(POOLINGS)})")
        blocks = {"prompt": self.prompt, "query": self.mean, "last": self.last}[pooling]
        if not len(self.embed) or not len(blocks):
            raise AlignlensError(f"task {self.task}, language {self.lang}: no {pooling}-pooled states with the "
                                 "embedding output were captured (a shard of an older alignlens); re-run with --force")
        emb = self.embed.to_tensor()[:, EMBED_ROWS.index(pooling)]
        return torch.cat([emb.unsqueeze(1), blocks.to_tensor()], dim=1)


class Capturer:
    """The capture of one task and language, as an `engine.Probe`: `hooks(batch)` read the
    residual stream and MLP pre-activations, `after_batch(batch)` reduces them and runs the
    logit lens. Pass it as `evaluate.evaluate_language(..., probes=[capturer])`; the reduced
    result is `capturer.capture`."""

    def __init__(self, model: LoadedModel, spec: data.TaskSpec, lang: str, lens_overlap: str = "token-set",
                 prompts: str = "english-labels") -> None:
        self.model = model
        self.n_layers, self.d_model, self.d_mlp = model.n_layers, model.d_model, model.d_mlp
        tok = model.tokenizer
        self.where = f"task {spec.name}, language {lang}"
        self.sets_en = label_sets(tok, spec.labels, self.where)
        words = spec.prompts[lang].label_words
        self.sets_target = [label_token_ids(tok, words.get(w, w), f"{self.where}, label {w!r} (word {words.get(w, w)!r})")
                            for w in spec.labels]
        overlap = torch.tensor(label_overlap(tok, spec.labels, [words.get(w, w) for w in spec.labels],
                                             self.sets_en, self.sets_target, lens_overlap))
        self.capture = LanguageCapture.empty(spec.name, lang, self.n_layers, self.d_mlp, overlap, prompts)
        self._last: torch.Tensor | None = None
        self._mean: torch.Tensor | None = None
        self._prompt: torch.Tensor | None = None  # [batch, n_layers, d_model] prompt means of the batch
        self._embed: torch.Tensor | None = None  # [batch, 3, d_model] embedding output (EMBED_ROWS)
        # The shared prefix (`prefix_hooks`): float64 sums over its tokens [n_layers + 1, d_model]
        # (row 0 the embedding output) and its token count; none when the prompts share no prefix.
        self._prefix_sum: torch.Tensor | None = None
        self._prefix_len = 0

    def prefix_hooks(self, n_tokens: int) -> list[Hook]:
        """Hooks for the shared prefix's one forward pass ([1, n_tokens, d_model]): the float64 sum
        over its tokens of the embedding output and of every block's output, kept for the prompt
        mean of every item (`engine.Probe.prefix_hooks`)."""
        self._prefix_len = n_tokens
        self._prefix_sum = None

        def add(row: int, x: torch.Tensor) -> None:
            if self._prefix_sum is None:
                self._prefix_sum = torch.zeros(self.n_layers + 1, self.d_model, dtype=torch.float64, device=x.device)
            self._prefix_sum[row] = x[0].double().sum(0)

        def embed(x: torch.Tensor, hook) -> torch.Tensor:
            add(0, x)
            return x

        def resid(x: torch.Tensor, hook) -> torch.Tensor:
            add(int(hook.name.split(".")[1]) + 1, x)
            return x

        return [(EMBED_HOOK, embed)] + [(resid_hook_name(i), resid) for i in range(self.n_layers)]

    def hooks(self, batch: SuffixBatch) -> list[Hook]:
        """Hooks for one batch: the embedding output and every block's resid_post (last position,
        mean over the query's tokens, mean over all prompt tokens with the prefix's sums) and MLP
        pre-activation (counted where > 0)."""
        n = len(batch.rows)
        dev = batch.mask.device
        self._last = torch.zeros(n, self.n_layers, self.d_model, dtype=torch.float32, device=dev)
        self._mean = torch.zeros_like(self._last)
        self._prompt = torch.zeros_like(self._last)
        self._embed = torch.zeros(n, len(EMBED_ROWS), self.d_model, dtype=torch.float32, device=dev)
        mask = batch.mask
        rows = torch.arange(n, device=dev)
        counts = mask.sum(1, keepdim=True).float()
        prompt_counts = counts.double() + self._prefix_len

        def pools(x: torch.Tensor, row: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """(last, query mean, prompt mean) [n, d_model] of hidden-state row `row` (0 = embedding)."""
            # where, not a product: a NaN at a padding position must not reach a real row's mean
            query_sum = torch.where(mask.unsqueeze(-1), x.double(), 0.0).sum(1)
            prefix = self._prefix_sum[row] if self._prefix_sum is not None else 0.0
            return (x[rows, batch.last].float(), (query_sum / counts.double()).float(),
                    ((prefix + query_sum) / prompt_counts).float())

        def embed(x: torch.Tensor, hook) -> torch.Tensor:
            self._embed[:] = torch.stack(pools(x, 0), dim=1)
            return x

        def resid(x: torch.Tensor, hook) -> torch.Tensor:
            layer = int(hook.name.split(".")[1])
            self._last[:, layer], self._mean[:, layer], self._prompt[:, layer] = pools(x, layer + 1)
            return x

        def mlp(x: torch.Tensor, hook) -> torch.Tensor:
            if x.shape[-1] != self.d_mlp:
                raise AlignlensError(f"{hook.name}: last dim {x.shape[-1]} is not d_mlp={self.d_mlp}")
            self.capture.neurons.update(int(hook.name.split(".")[1]), x, mask)  # counts x > 0 where mask
            return x

        hooks = [(EMBED_HOOK, embed)] + [(resid_hook_name(i), resid) for i in range(self.n_layers)]
        hooks += [(mlp_hook_name(i), mlp) for i in range(self.n_layers)]
        return hooks

    def after_batch(self, batch: SuffixBatch) -> None:
        """Store the batch's states and lens values; NumericalError (naming task, language and
        items) if any of them is NaN/inf."""
        c = self.capture
        self._check(batch, "residual-stream activations", self._last, self._mean, self._prompt, self._embed)
        lens = lens_label_probs(self.model, self._last.to(self.model.dtype), self.sets_en, self.sets_target)
        self._check(batch, "logit-lens values", *lens)
        c.last.update(batch.rows, self._last.cpu())
        c.mean.update(batch.rows, self._mean.cpu())
        c.prompt.update(batch.rows, self._prompt.cpu())
        c.embed.update(batch.rows, self._embed.cpu())
        c.p_en.update(batch.rows, lens.p_en)
        c.p_target.update(batch.rows, lens.p_target)
        c.p_en_all.update(batch.rows, lens.p_en_all)
        c.p_target_all.update(batch.rows, lens.p_target_all)
        c.entropy.update(batch.rows, lens.entropy_bits)
        self._last = self._mean = self._prompt = self._embed = None

    def _check(self, batch: SuffixBatch, what: str, *tensors: torch.Tensor) -> None:
        """Raise NumericalError naming the rows (item ids) where any tensor [batch, ...] is not finite."""
        bad = torch.zeros(len(batch.rows), dtype=torch.bool)
        for t in tensors:
            bad |= ~torch.isfinite(t).reshape(len(batch.rows), -1).all(dim=1).cpu()
        if bool(bad.any()):
            ids = batch.ids or batch.rows
            raise nonfinite_error(what, self.where, [ids[i] for i in bad.nonzero().flatten().tolist()], self.model.dtype)
