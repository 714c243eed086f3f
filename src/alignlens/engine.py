"""The scoring engine: the model's unembedding and the batched few-shot forward pass.

`Unembed` is the one place that turns hidden states into next-token logits (final norm, LM
head, final-logit soft-cap where the config has one). Evaluation, the logit lens and the
training loss all use it.

`score_prompts` scores many prompts that share a few-shot prefix, with probabilities identical
to one plain forward pass per prompt (tested):
- the prefix is encoded once (`prefix_cache=True`); every batch of queries attends to its
  key/value cache through broadcast views (no per-batch copy of the cache). Without probes, the
  cached part is every token all prompts share (the few-shot prefix plus the query template's
  common start, e.g. "Premise:"); with probes it is the few-shot prefix's tokens only, so a
  probe's query tokens stay the item's own;
- queries run in right-padded batches of similar lengths; only the last real position of each
  row goes through the LM head (Gemma's 262k-word head is most of the cost of a full-logits
  pass). The head runs on the last states of several consecutive batches at once (up to
  `head_rows` rows): each call reads the whole [vocab, d_model] weight (671 MB for
  Gemma-3-270m), so a call on one small batch's rows is memory-bound. A call has at least
  `HEAD_MIN_ROWS` rows (zero rows pad it): fewer rows take other BLAS kernels whose rounding
  differs; from there on, on the CPUs measured, a row's logits do not depend on the call's other
  rows or their number. Which kernels a BLAS picks depends on the CPU, so nothing relies on bit
  equality: whichever batches a rank pools, results agree within float rounding (tested);
- `unprobed` queries (evaluation's content-free calibration queries) ride in the same call: they
  reuse the prefix pass and share head calls, in their own batches that probes never see. With
  probes, when their prompts share fewer of the prefix's tokens than the queries' (emotion's empty
  content-free query merges the prefix's trailing newline), they get a second, shorter prefix
  pass: what the probes see never depends on them.

Probes (`Probe`: `hooks(batch)` for one query batch, `after_batch(batch)` after its forward
pass, and optionally `prefix_hooks(n_tokens)` for the shared prefix's one pass) read activations
on the way; the capture pass of `alignlens analyze` is one (`alignlens.capture.capturer.Capturer`).
User `fwd_hooks` apply to every pass, the prefix's too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from alignlens import AlignlensError, NumericalError

if TYPE_CHECKING:
    from alignlens.model import LoadedModel

#: A TransformerLens hook: (hook name or name filter, fn(activation, hook) -> activation or None).
Hook = tuple[str | Callable[[str], bool], Callable]

# Attribute names of the final norm on a decoder body (Llama/Gemma/Qwen/Mistral: `norm`;
# GPT-2/GPT-J: `ln_f`; Phi/GPT-NeoX: `final_layernorm` / `final_layer_norm`).
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


def decoder_body(hf_model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack of an HF causal LM (embeddings, blocks, final norm; no LM head).

    Its `last_hidden_state` is already final-normed: pass it to `Unembed.head`, not `Unembed`."""
    body = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else None
    if body is None or body is hf_model:
        body = getattr(hf_model, "base_model", None)
    if body is None or body is hf_model:
        raise AlignlensError(f"{type(hf_model).__name__}: cannot find the decoder body")
    return body


class Unembed:
    """Final norm + LM head + final-logit soft-cap of an HF causal LM (a plain class, not a Module).

    `unembed(hidden)` -> logits: hidden [..., d_model] (residual stream, not yet normed) ->
    [..., vocab]; equals `unembed.head(unembed.norm(hidden))`.
    `unembed.norm(hidden)`: the model's final norm, [..., d_model] -> [..., d_model].
    `unembed.head(normed)`: LM head, then `tanh(logits / cap) * cap` when the config sets
    `final_logit_softcapping` (Gemma 2/3), [..., d_model] -> [..., vocab]. Use it on a decoder
    body's `last_hidden_state` (already normed): evaluation and the training loss do.

    It holds references to the model's own modules (no copies, no parameters of its own), so
    it sees weight updates; build it after any module replacement (a peft/LoRA wrap) and from
    the HF model (`get_base_model()` of a peft model). On a bridged model the modules are the
    bridge's hooked components, so `hook_normalized`/unembed hooks fire as in a full pass.
    """

    def __init__(self, norm: torch.nn.Module, lm_head: torch.nn.Module, softcap: float | None):
        self.final_norm = norm
        self.lm_head = lm_head
        self.softcap = softcap

    @classmethod
    def from_hf(cls, hf_model: torch.nn.Module) -> Unembed:
        """The unembedding of `hf_model` (AlignlensError if it has no final norm or LM head)."""
        body = decoder_body(hf_model)
        norm = next((getattr(body, n) for n in _FINAL_NORM_NAMES if isinstance(getattr(body, n, None), torch.nn.Module)),
                    None)
        lm_head = hf_model.get_output_embeddings()
        if norm is None or lm_head is None:
            raise AlignlensError(f"{type(hf_model).__name__}: cannot find the final norm and LM head")
        return cls(norm, lm_head, getattr(hf_model.config, "final_logit_softcapping", None) or None)

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm: [..., d_model] -> [..., d_model]."""
        return self.final_norm(hidden)

    def head(self, normed: torch.Tensor) -> torch.Tensor:
        """LM head and soft-cap on final-normed states: [..., d_model] -> [..., vocab] logits."""
        logits = self.lm_head(normed)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from un-normed residual states: [..., d_model] -> [..., vocab]."""
        return self.head(self.norm(hidden))


# ---- the batched few-shot forward pass ------------------------------------------------------


@dataclass
class SuffixBatch:
    """What a probe needs to know about the batch now running.

    `mask` [batch, pos] marks real query tokens (False = padding); `last` [batch] is the index
    of each row's last real token; `rows` are positions of the rows in the language's item list;
    `ids` the item ids of the rows (the items' `index`, for messages); `where` names the task and
    language (for messages).
    """

    rows: list[int]
    mask: torch.Tensor
    last: torch.Tensor
    ids: list[int] = field(default_factory=list)
    where: str = ""


class Probe(Protocol):
    """Reads (or changes) activations of the query batches of `score_prompts`.

    `hooks(batch)`: TransformerLens hooks for this batch's forward pass only; hooks of several
    probes run in the order the probes are given.
    `after_batch(batch)`: called after the batch's forward pass, before the next batch.
    Optional `prefix_hooks(n_tokens)`: hooks for the one forward pass of the shared prefix (its
    first `n_tokens` tokens, batch 1, positions 0..n_tokens-1), run before any batch when
    `score_prompts` caches a prefix; a probe without this method does not see the prefix pass.
    The prefix's states are the same for every query, so a probe that needs whole-prompt
    statistics adds the prefix's part once (e.g. the capture's prompt mean pooling).
    """

    def hooks(self, batch: SuffixBatch) -> list[Hook]: ...

    def after_batch(self, batch: SuffixBatch) -> None: ...


def nonfinite_error(what: str, where: str, ids: Sequence[int], dtype: torch.dtype | None = None) -> NumericalError:
    """One line: which values are NaN/inf, where (task, language) and for which items (ids)."""
    ids = sorted(ids)
    shown = ", ".join(str(i) for i in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    hint = " (float16 overflows; use float32 or bfloat16)" if dtype == torch.float16 else ""
    at = f"{where}: " if where else ""
    return NumericalError(f"{at}non-finite {what} (NaN or inf) for item index {shown}{hint}")


def encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """HF tokenization with the tokenizer's own special tokens (BOS where it adds one)."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def shared_prefix_len(prefix_ids: Sequence[int], prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt shares with the prefix's tokenization (up to where any prompt differs),
    leaving at least one token of each prompt to run as its query."""
    return min([common_prefix_len(prefix_ids, p) for p in prompts] + [min(len(p) for p in prompts) - 1])


def cached_lengths(prefix_ids: Sequence[int] | None, prompts: Sequence[Sequence[int]], n_q: int) -> tuple[int, int]:
    """(k, k_u): the tokens `score_prompts` caches before the queries' prompts (`prompts[:n_q]`) and
    before the unprobed queries' (`prompts[n_q:]`). Without `prefix_ids` (no probes): every token
    all prompts share, k = k_u. With them (probes: a query's tokens stay the item's own): the tokens
    each part shares with the prefix's tokenization. An unprobed query may tokenize the prefix's end
    differently (emotion's empty content-free query merges its trailing newline); it then gets its
    own, shorter, cache, so the tokens the probes see never depend on the unprobed queries."""
    if prefix_ids is None:
        k = shared_prefix_len(prompts[0], prompts)
        return k, k
    k = shared_prefix_len(prefix_ids, prompts[:n_q]) if n_q else 0
    return k, (shared_prefix_len(prefix_ids, prompts[n_q:]) if len(prompts) > n_q else k)


def _right_padded(suffixes: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), long [batch, width]. Right padding: real tokens keep contiguous positions, and
    causal attention keeps the padding (after them) invisible to them."""
    width = max(len(s) for s in suffixes)
    ids = torch.full((len(suffixes), width), pad, dtype=torch.long)
    mask = torch.zeros((len(suffixes), width), dtype=torch.long)
    for r, s in enumerate(suffixes):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _batch_view(cache: Any, n: int) -> Any:
    """The prefix's key/value `cache` (batch 1) for a batch of `n` queries, without copying it:
    each layer's keys/values are broadcast views (`expand`). The layers' `update` concatenates the
    new keys to them into new tensors, so the prefix's own cache is never written. A cache without
    per-layer `keys`/`values` (another Cache type) is deep-copied and repeated instead."""
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(n)
        return batch_cache
    view = copy.copy(cache)
    view.layers = []
    for layer in layers:
        mine = copy.copy(layer)
        if isinstance(layer.keys, torch.Tensor) and layer.keys.dim() == 4 and layer.keys.shape[0] == 1:
            mine.keys = layer.keys.expand(n, -1, -1, -1)
            mine.values = layer.values.expand(n, -1, -1, -1)
        view.layers.append(mine)
    return view


def suffix_positions(mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention_mask long [batch, k + width], position_ids [batch, width]) of a right-padded
    suffix batch (`mask` [batch, width], 1 = real token) after k cached tokens."""
    n, width = mask.shape
    attn = torch.cat([torch.ones((n, k), dtype=torch.long, device=mask.device), mask.long()], dim=1)
    return attn, (k + torch.arange(width, device=mask.device)).unsqueeze(0).expand(n, -1)


def _suffix_forward(body: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, k: int, cache: Any) -> torch.Tensor:
    """Final hidden states [batch, width, d_model] of query tokens `ids` at positions k, k+1, ...
    after the prefix's key/value `cache` (batch 1; None: no prefix, k = 0)."""
    kwargs: dict[str, Any] = {"use_cache": False}
    if cache is not None:
        kwargs = {"past_key_values": _batch_view(cache, ids.shape[0]), "use_cache": True}
    attn, positions = suffix_positions(mask, k)
    return body(input_ids=ids, attention_mask=attn, position_ids=positions, **kwargs).last_hidden_state


# ---- passes that enter the decoder at a block (cross-model patching, `alignlens.localize`) ----


def check_layer_entry(model: LoadedModel) -> None:
    """AlignlensError unless `decoder_pass` can enter this model's decoder at a block with a given
    residual (`decoder_entry.check_entry`: verified on the model once, by its outputs)."""
    from alignlens.decoder_entry import check_entry

    hf = model.hf_model
    check_entry(decoder_body(hf), Unembed.from_hf(hf).final_norm, model.n_layers,
                int(hf.get_input_embeddings().weight.shape[0]), model.device)


@torch.no_grad()
def decoder_pass(model: LoadedModel, *, ids: torch.Tensor | None = None, layer: int = 0,
                 residual: torch.Tensor | None = None, cache: Any = None, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, fwd_hooks: Sequence[Hook] = (),
                 keep_cache: bool = False) -> tuple[torch.Tensor, Any]:
    """One pass of the decoder body: (final-normed states [batch, width, d_model], the key/value
    cache after it when `keep_cache`, else None).

    Either `ids` [batch, width] (token ids, a plain pass from the embeddings; `layer` 0) or
    `residual` [batch, width, d_model]: the pass enters at block `layer` (0..n_layers; 0 = the
    embedding output, n_layers = straight to the final norm) with it as that block's hidden-state
    input, and blocks < `layer` are not computed (`alignlens.decoder_entry`; the model is checked
    once by `check_layer_entry`); their hooks do not fire, hooks at block `layer` and above do.
    `cache`: the key/value cache of the tokens before these (batch 1: shared by every row, broadcast
    without copying; or one per row); never modified (the pass updates a view of it). Its blocks
    below `layer` are never read but must exist (their lengths set the attention mask's size; see
    `compose_cache`). `attention_mask` [batch, cached + width] (default all ones) and `position_ids`
    [batch, width] (default cached, cached + 1, ...). `fwd_hooks`: TransformerLens hooks for this pass."""
    from alignlens.decoder_entry import decoder_layers, entered_at

    body = decoder_body(model.hf_model)
    x = ids if residual is None else residual
    n, width = x.shape[0], x.shape[1]
    past = cache.get_seq_length() if cache is not None else 0
    dev = model.device
    if attention_mask is None:
        attention_mask = torch.ones((n, past + width), dtype=torch.long, device=dev)
    if position_ids is None:
        position_ids = (past + torch.arange(width, device=dev)).unsqueeze(0).expand(n, -1)
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "position_ids": position_ids,
                              "use_cache": keep_cache or cache is not None}
    if cache is not None:
        kwargs["past_key_values"] = _batch_view(cache, n)
    with model.bridge.hooks(fwd_hooks=list(fwd_hooks)):
        if residual is None:
            if layer != 0:
                raise ValueError("decoder_pass: token ids enter at layer 0; pass a residual to enter at a block")
            out = body(input_ids=ids, **kwargs)
        else:
            check_layer_entry(model)
            residual = residual.to(device=dev, dtype=model.dtype)
            with entered_at(body, decoder_layers(body, model.n_layers), Unembed.from_hf(model.hf_model).final_norm,
                            layer, residual):
                out = body(inputs_embeds=residual, **kwargs)
    return out.last_hidden_state, (out.past_key_values if keep_cache else None)


def compose_cache(below: Any, above: Any, layer: int) -> Any:
    """A key/value cache whose blocks < `layer` are `below`'s and the rest `above`'s (no copy):
    a prefix run that entered at block `layer` filled only the blocks from there; its blocks
    below come from a full run of the same tokens (never read by a pass entering at `layer`, but
    their lengths set the attention mask). AlignlensError for caches without per-block layers."""
    if not hasattr(below, "layers") or not hasattr(above, "layers") or len(below.layers) != len(above.layers):
        raise AlignlensError(f"cannot combine key/value caches of types {type(below).__name__} and "
                             f"{type(above).__name__} (per-block layers needed)")
    out = copy.copy(above)
    out.layers = list(below.layers[:layer]) + list(above.layers[layer:])
    return out


#: Default rows per LM-head call (`score_prompts(head_rows=...)`) and the fewest rows a call has.
HEAD_ROWS = 64
HEAD_MIN_ROWS = 16


def plan_batches(lengths: Sequence[int], n_probed: int, batch_size: int) -> list[list[int]]:
    """The batches (row indices) of one `score_prompts` call: rows `0..n_probed-1` (the queries)
    and the rest (unprobed queries) are each sorted by `lengths` (similar lengths together) and
    cut into batches of `batch_size`; a batch never mixes the two. Independent of the ranks."""
    batches = []
    for part in (range(n_probed), range(n_probed, len(lengths))):
        order = sorted(part, key=lambda i: lengths[i])
        batches += [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return batches


def head_probs(unembed: Unembed, states: torch.Tensor, index_sets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Label-set probabilities float64 [rows, n_labels] (CPU) from final-normed last states
    [rows, d_model]: LM head (on at least `HEAD_MIN_ROWS` rows: zero rows pad it), softmax over
    the vocabulary, mass of each set."""
    n = states.shape[0]
    if n < HEAD_MIN_ROWS:
        states = torch.cat([states, states.new_zeros(HEAD_MIN_ROWS - n, states.shape[1])])
    probs = torch.softmax(unembed.head(states).float(), dim=-1)[:n]
    return torch.stack([probs[:, idx.to(probs.device)].sum(-1) for idx in index_sets], dim=1).double().cpu()


@torch.no_grad()
def score_prompts(
    model: LoadedModel,
    prefix: str,
    queries: Sequence[str],
    label_sets: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    prefix_cache: bool = True,
    fwd_hooks: Sequence[Hook] = (),
    probes: Sequence[Probe] = (),
    on_batch_done: Callable[[int], None] | None = None,
    item_ids: Sequence[int] | None = None,
    where: str = "",
    select_batches: Callable[[list[int]], Sequence[int]] | None = None,
    unprobed: Sequence[str] = (),
    unprobed_where: str = "queries without probes",
    head_rows: int = HEAD_ROWS,
) -> torch.Tensor:
    """Next-token probability mass of each label set after each prompt `prefix + query`.

    Returns float64 [n_queries + n_unprobed, n_labels]: the `queries`' rows, then the `unprobed`
    queries' (scored like the others, in their own batches, which probes never see; messages name
    them as `where`, `unprobed_where`, by position). `fwd_hooks` (TransformerLens hook name or
    filter, hook fn) apply to every forward pass (prefix and queries): use them to ablate, patch
    or steer. `probes` hook each batch of `queries` (and, with `prefix_hooks`, the prefix pass;
    see `Probe`), after the `fwd_hooks`. `batch_size`: rows per body forward pass (and per probe
    batch); `head_rows`: the LM head runs once every this many rows (the last states of whole
    consecutive batches; the values do not depend on it, see the module docstring).
    `on_batch_done(n)` is told the number of `queries` scored by each head call.

    `select_batches(costs)`: data parallelism. The plan (shared-prefix lengths, `plan_batches`) is
    always the whole call's; given each planned batch's cost (padded query tokens) it returns the
    indices of the batches this call runs. The shared-prefix length is the tokens all prompts share
    (with probes: the few-shot prefix's only, counted over the queries and over the unprobed queries
    separately). The rows of the other batches stay 0 and probes never see them; the queries' prefix
    pass always runs.

    When label probabilities are not finite (NaN/inf logits: float16 overflow, a hook writing
    NaN), NumericalError is raised after the head call that computed them, naming `where` and the
    items (`item_ids`, the queries' ids; default their positions).
    """
    tok, device = model.tokenizer, model.device  # where inputs go (the input embedding's device)
    body, unembed = decoder_body(model.hf_model), Unembed.from_hf(model.hf_model)
    n_q = len(queries)
    full = encode(tok, [prefix + q for q in list(queries) + list(unprobed)])
    k = k_u = 0  # cached tokens for the queries' batches and for the unprobed queries' batches
    if prefix_cache:  # with probes, a query's tokens are the item's own (see the module docstring)
        k, k_u = cached_lengths(encode(tok, [prefix])[0] if probes else None, full, n_q)
    ids_of = list(item_ids) if item_ids is not None else list(range(n_q))
    if len(ids_of) != n_q:
        raise ValueError(f"item_ids has {len(ids_of)} ids for {n_q} queries")
    index_sets = [torch.tensor(list(s), dtype=torch.long) for s in label_sets]  # moved to the head's device
    out = torch.zeros(len(full), len(label_sets), dtype=torch.float64)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = plan_batches([len(f) for f in full], n_q, batch_size)
    run = range(len(batches))

    def cached(row: int) -> int:  # tokens cached before `row`'s query
        return k if row < n_q else k_u

    if select_batches is not None:
        costs = [len(b) * max(len(full[i]) - cached(i) for i in b) for b in batches]
        run = sorted(set(int(j) for j in select_batches(costs)))
    with model.bridge.hooks(fwd_hooks=list(fwd_hooks)):
        cache = cache_u = None
        if k > 0:
            prefix_hooks = [h for p in probes if hasattr(p, "prefix_hooks") for h in p.prefix_hooks(k)]
            with model.bridge.hooks(fwd_hooks=prefix_hooks):
                cache = body(input_ids=torch.tensor([full[0][:k]], device=device), use_cache=True).past_key_values
        if k_u == k:
            cache_u = cache
        elif k_u > 0 and any(batches[j][0] >= n_q for j in run):
            cache_u = body(input_ids=torch.tensor([full[n_q][:k_u]], device=device), use_cache=True).past_key_values
        rows: list[int] = []
        states: list[torch.Tensor] = []
        for n_run, j in enumerate(run, 1):
            b = batches[j]
            probed = b[0] < n_q  # a batch holds queries or unprobed queries, never both
            kb = cached(b[0])
            ids, mask = _right_padded([full[i][kb:] for i in b], pad, device)
            batch = SuffixBatch(list(b), mask.bool(), mask.sum(1) - 1,
                                [ids_of[i] for i in b] if probed else [i - n_q for i in b], where)
            states.append(_batch_last_states(model, body, cache if probed else cache_u, kb, batch, ids, mask,
                                             probes if probed else ()))
            rows += b
            if len(rows) < head_rows and n_run < len(run):
                continue
            out[rows] = head_probs(unembed, torch.cat(states), index_sets)
            bad = [i for i, ok in zip(rows, torch.isfinite(out[rows]).all(dim=1).tolist()) if not ok]
            if any(i < n_q for i in bad):
                raise nonfinite_error("label probabilities", where, [ids_of[i] for i in bad if i < n_q], model.dtype)
            if bad:
                raise nonfinite_error("label probabilities", f"{where}, {unprobed_where}", [i - n_q for i in bad],
                                      model.dtype)
            scored = sum(i < n_q for i in rows)
            if on_batch_done is not None and scored:
                on_batch_done(scored)
            rows, states = [], []
    return out


def _batch_last_states(model: LoadedModel, body: torch.nn.Module, cache: Any, k: int,
                       batch: SuffixBatch, ids: torch.Tensor, mask: torch.Tensor, probes: Sequence[Probe]) -> torch.Tensor:
    """One body forward of a query batch (`ids`, `mask` [batch, width]: its tokens after the first
    k, after the prefix's `cache`) with the probes' hooks, then their `after_batch`. Returns the
    final-normed states [batch, d_model] at each row's last real position."""
    with model.bridge.hooks(fwd_hooks=[h for p in probes for h in p.hooks(batch)]):
        hidden = _suffix_forward(body, ids, mask, k, cache)
    for p in probes:
        p.after_batch(batch)
    # The tensor's own device: with a device map the last block, the norm and the LM head may sit
    # on other devices than the inputs (accelerate moves module inputs).
    return hidden[torch.arange(len(batch.rows), device=hidden.device), batch.last.to(hidden.device)]


@torch.no_grad()
def reference_probs(model: LoadedModel, prompt: str, label_sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """The paper's method, for checking: one prompt, full-sequence logits, last position.

    Returns float64 [n_labels]."""
    ids = torch.tensor(encode(model.tokenizer, [prompt]), device=model.device)
    logits = model.hf_model(input_ids=ids).logits[0, -1]
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.stack([probs[list(s)].sum() for s in label_sets]).double().cpu()
