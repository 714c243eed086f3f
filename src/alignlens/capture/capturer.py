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
statistic. Every activation is pooled on its own device (`pool_states`: the mask, indices and prefix
sums are brought to it), so a model split over devices (`--device-map`) is captured as a whole one;
the pooled rows are gathered on the batch's device after the pass. Everything kept is a reducer
(`alignlens.capture.reducers`), so shards from several processes can be combined
(`alignlens.capture.shards` writes and reads them).
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


class _BatchOnDevice(NamedTuple):
    """A batch's index tensors on one device: mask [batch, pos] bool, rows [batch] (0..batch-1),
    last [batch] (last real token), counts and prompt_counts [batch, 1] float64 (query tokens, and
    prefix + query tokens)."""

    mask: torch.Tensor
    rows: torch.Tensor
    last: torch.Tensor
    counts: torch.Tensor
    prompt_counts: torch.Tensor


class PoolIndex:
    """A batch's mask, last-token index and token counts, built once per device (`on`): with
    `--device-map` the blocks, and so their hooked activations, live on different devices, and
    each activation is pooled with index tensors on its own device."""

    def __init__(self, mask: torch.Tensor, last: torch.Tensor, prefix_len: int = 0) -> None:
        self.mask, self.last, self.prefix_len = mask, last, prefix_len
        self._by_device: dict[torch.device, _BatchOnDevice] = {}

    def on(self, device: torch.device) -> _BatchOnDevice:
        """The index tensors on `device` (copied there once, then reused)."""
        if device not in self._by_device:
            mask, last = self.mask.to(device), self.last.to(device)
            counts = mask.sum(1, keepdim=True).double()
            self._by_device[device] = _BatchOnDevice(mask, torch.arange(mask.shape[0], device=device), last, counts,
                                                     counts + self.prefix_len)
        return self._by_device[device]


def pool_states(x: torch.Tensor, index: PoolIndex, prefix_sum: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(last, query mean, prompt mean), float32 [batch, d_model], of one hidden-state row's
    activations ``x`` [batch, pos, d_model] (the query tokens after the shared prefix), computed on
    ``x.device`` (every other tensor is brought there): the last real token, the mean over the
    query's real tokens, and (prefix_sum + query sum) / (prefix_len + query tokens) with
    ``prefix_sum`` [d_model] the float64 sum of the prefix's tokens (None: no shared prefix).
    Float64 sums; padding never enters a statistic."""
    idx = index.on(x.device)
    # where, not a product: a NaN at a padding position must not reach a real row's mean
    query_sum = torch.where(idx.mask.unsqueeze(-1), x.double(), 0.0).sum(1)
    prefix = prefix_sum.to(x.device) if prefix_sum is not None else 0.0
    return (x[idx.rows, idx.last].float(), (query_sum / idx.counts).float(),
            ((prefix + query_sum) / idx.prompt_counts).float())


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
        # The batch's pooled states (`hooks`): hidden-state row (0 = embedding output, l + 1 = block l)
        # -> (last, query mean, prompt mean) float32 [batch, d_model], each on its activation's device.
        self._pooled: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # The shared prefix (`prefix_hooks`): per hidden-state row, the float64 sum over its tokens
        # [d_model] (on that row's device), and its token count; none when the prompts share no prefix.
        self._prefix_sums: dict[int, torch.Tensor] = {}
        self._prefix_len = 0

    def prefix_hooks(self, n_tokens: int) -> list[Hook]:
        """Hooks for the shared prefix's one forward pass ([1, n_tokens, d_model]): the float64 sum
        over its tokens of the embedding output and of every block's output, kept (on the
        activation's device) for the prompt mean of every item (`engine.Probe.prefix_hooks`)."""
        self._prefix_len = n_tokens
        self._prefix_sums = {}

        def embed(x: torch.Tensor, hook) -> torch.Tensor:
            self._prefix_sums[0] = x[0].double().sum(0)
            return x

        def resid(x: torch.Tensor, hook) -> torch.Tensor:
            self._prefix_sums[int(hook.name.split(".")[1]) + 1] = x[0].double().sum(0)
            return x

        return [(EMBED_HOOK, embed)] + [(resid_hook_name(i), resid) for i in range(self.n_layers)]

    def hooks(self, batch: SuffixBatch) -> list[Hook]:
        """Hooks for one batch: the embedding output and every block's resid_post (last position,
        mean over the query's tokens, mean over all prompt tokens with the prefix's sums: `pool_states`,
        computed on the activation's own device) and MLP pre-activation (counted where > 0)."""
        index = PoolIndex(batch.mask, batch.last, self._prefix_len)
        self._pooled = {}

        def pool(row: int, x: torch.Tensor) -> None:
            self._pooled[row] = pool_states(x, index, self._prefix_sums.get(row))

        def embed(x: torch.Tensor, hook) -> torch.Tensor:
            pool(0, x)
            return x

        def resid(x: torch.Tensor, hook) -> torch.Tensor:
            pool(int(hook.name.split(".")[1]) + 1, x)
            return x

        def mlp(x: torch.Tensor, hook) -> torch.Tensor:
            if x.shape[-1] != self.d_mlp:
                raise AlignlensError(f"{hook.name}: last dim {x.shape[-1]} is not d_mlp={self.d_mlp}")
            self.capture.neurons.update(int(hook.name.split(".")[1]), x, batch.mask)  # counts x > 0 where mask
            return x

        hooks = [(EMBED_HOOK, embed)] + [(resid_hook_name(i), resid) for i in range(self.n_layers)]
        hooks += [(mlp_hook_name(i), mlp) for i in range(self.n_layers)]
        return hooks

    def _gathered(self, batch: SuffixBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's pooled states on the batch's device (that of its mask, the model's input):
        last, query mean, prompt mean [batch, n_layers, d_model] and embedding output [batch, 3, d_model]."""
        missing = [r for r in range(self.n_layers + 1) if r not in self._pooled]
        if missing:
            raise AlignlensError(f"{self.where}: the capture hooks did not run for hidden-state row(s) {missing}")
        dev = batch.mask.device
        rows = [[t.to(dev) for t in self._pooled[r]] for r in range(self.n_layers + 1)]
        blocks = [torch.stack([row[k] for row in rows[1:]], dim=1) for k in range(3)]
        return blocks[0], blocks[1], blocks[2], torch.stack(rows[0], dim=1)

    def after_batch(self, batch: SuffixBatch) -> None:
        """Store the batch's states and lens values; NumericalError (naming task, language and
        items) if any of them is NaN/inf."""
        c = self.capture
        last, mean, prompt, embed = self._gathered(batch)
        self._pooled = {}
        self._check(batch, "residual-stream activations", last, mean, prompt, embed)
        lens = lens_label_probs(self.model, last.to(self.model.dtype), self.sets_en, self.sets_target)
        self._check(batch, "logit-lens values", *lens)
        c.last.update(batch.rows, last.cpu())
        c.mean.update(batch.rows, mean.cpu())
        c.prompt.update(batch.rows, prompt.cpu())
        c.embed.update(batch.rows, embed.cpu())
        c.p_en.update(batch.rows, lens.p_en)
        c.p_target.update(batch.rows, lens.p_target)
        c.p_en_all.update(batch.rows, lens.p_en_all)
        c.p_target_all.update(batch.rows, lens.p_target_all)
        c.entropy.update(batch.rows, lens.entropy_bits)

    def _check(self, batch: SuffixBatch, what: str, *tensors: torch.Tensor) -> None:
        """Raise NumericalError naming the rows (item ids) where any tensor [batch, ...] is not finite."""
        bad = torch.zeros(len(batch.rows), dtype=torch.bool)
        for t in tensors:
            bad |= ~torch.isfinite(t).reshape(len(batch.rows), -1).all(dim=1).cpu()
        if bool(bad.any()):
            ids = batch.ids or batch.rows
            raise nonfinite_error(what, self.where, [ids[i] for i in bad.nonzero().flatten().tolist()], self.model.dtype)
