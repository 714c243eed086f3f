"""Entering an HF decoder body at block L with a given residual stream, without computing blocks < L.

TransformerLens's `start_at_layer` swaps a residual in at block L but still runs the blocks below
it (and discards their output). Cross-model patching (`alignlens.localize`) runs hundreds of
passes that each start at a site's layer, so here the blocks below L are not computed at all:

- while `entered_at(layers, norm, L, residual)` is active, every decoder layer < L has its
  `forward` replaced by a stub that returns its hidden-state input unchanged (HF's decoder loop is
  `hidden = layer(hidden, ...)`, so the loop passes the hidden state through untouched), and a
  forward pre-hook on layer L (on the final norm when L = n_layers) replaces that layer's
  hidden-state input by `residual` [batch, width, d_model];
- the engine calls the body with `inputs_embeds=residual`, so the embedding lookup is skipped and
  masks, rotary tables and cache positions are built for the right shape. The pre-hook puts the
  residual back at block L after the body's own pre-processing (GPT-2 adds its position embeddings
  to `inputs_embeds`), so L = 0 also means "the embedding output" (`blocks.0.hook_resid_pre`:
  Gemma's scaled embeddings, GPT-2's token + position embeddings).

On a bridged model the decoder layers are TransformerLens `BlockBridge`s: a stubbed block fires no
hook, and block L's `hook_resid_pre` sees the injected residual, so hooks patch sites at layer L
and above as in a full pass.

Nothing here names an architecture. `check_entry` verifies the mechanism on the model itself (a
few tokens, with and without a key/value cache, entering at the first, a middle and the final
position): the outputs must equal a full pass's and no submodule of a skipped block may run; an
architecture whose decoder loop does anything else (a residual added outside the layers, blocks
called twice, a layer output the loop post-processes) is refused with an AlignlensError.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from alignlens import AlignlensError

#: Per decoder body: None once `check_entry` passed, else the refusal message.
_CHECKED: "weakref.WeakKeyDictionary[torch.nn.Module, str | None]" = weakref.WeakKeyDictionary()
#: Per decoder body: whether its layers return a tuple (hidden, ...) rather than a tensor.
_TUPLE_OUTPUT: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def decoder_layers(body: torch.nn.Module, n_layers: int) -> torch.nn.ModuleList:
    """The ModuleList of the `n_layers` decoder blocks of a decoder body (its one child list of
    that length: `layers` on Llama/Gemma/Qwen, `h` on GPT-2). AlignlensError if there is none or
    several."""
    found = [m for m in body.children() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    if len(found) != 1:
        raise AlignlensError(f"{type(body).__name__}: cannot find its list of {n_layers} decoder blocks "
                             "(entering the decoder at a block is not supported for this architecture)")
    return found[0]


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    h = kwargs.get("hidden_states")
    return h if isinstance(h, torch.Tensor) else None


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args and isinstance(args[0], torch.Tensor):
        return (hidden,) + tuple(args[1:]), kwargs
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return args, {**kwargs, "hidden_states": hidden}
    raise AlignlensError("a decoder block was called without a hidden-state tensor as its first input "
                         "(entering the decoder at a block is not supported for this architecture)")


@contextmanager
def entered_at(body: torch.nn.Module, layers: torch.nn.ModuleList, norm: torch.nn.Module, layer: int,
               residual: torch.Tensor) -> Iterator[None]:
    """While active, a forward of `body` skips blocks < `layer` (stubs) and block `layer` (the
    final `norm` when `layer == len(layers)`) receives `residual` [batch, width, d_model] as its
    hidden-state input. Call `check_entry` on the body first (the engine's `decoder_pass` does)."""
    n = len(layers)
    if not 0 <= layer <= n:
        raise AlignlensError(f"cannot enter the decoder at block {layer}: it has blocks 0..{n - 1} (and {n}: the final norm)")
    as_tuple = _TUPLE_OUTPUT.get(body, False)

    def stub(*args: Any, **kwargs: Any) -> Any:
        hidden = _hidden_of(args, kwargs)
        return (hidden,) if as_tuple else hidden

    def inject(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = _hidden_of(args, kwargs)
        if hidden is not None and hidden.shape != residual.shape:
            raise AlignlensError(f"entering the decoder at block {layer}: residual of shape {tuple(residual.shape)} "
                                 f"for hidden states of shape {tuple(hidden.shape)}")
        return _with_hidden(args, kwargs, residual)

    saved = [(m, m.__dict__.get("forward")) for m in list(layers)[:layer]]
    target = layers[layer] if layer < n else norm
    handle = target.register_forward_pre_hook(inject, with_kwargs=True)
    try:
        for m, _ in saved:
            m.__dict__["forward"] = stub  # an instance attribute: nn.Module.__call__ runs it instead
        yield
    finally:
        handle.remove()
        for m, old in saved:
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = old


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def check_entry(body: torch.nn.Module, norm: torch.nn.Module, n_layers: int, vocab_size: int,
                device: torch.device) -> None:
    """Verify once per body that `entered_at` reproduces a full pass (AlignlensError otherwise).

    On 6 token ids: a full pass records every block's hidden-state input (and the final norm's);
    then, for L in {0, n_layers // 2, n_layers}, a pass entering at L with that input must give
    the full pass's final states (relative tolerance 1e-4 in float32/64, 3e-2 in half types),
    without a cache and with the first 4 tokens as a key/value cache, and no submodule of a
    block < L may run. The verdict is remembered for the body."""
    if body in _CHECKED:
        if _CHECKED[body] is not None:
            raise AlignlensError(_CHECKED[body])
        return
    try:
        layers = decoder_layers(body, n_layers)
        _run_check(body, layers, norm, n_layers, vocab_size, device)
    except AlignlensError as exc:
        _CHECKED[body] = str(exc)
        raise
    _CHECKED[body] = None


def _run_check(body: torch.nn.Module, layers: torch.nn.ModuleList, norm: torch.nn.Module, n_layers: int,
               vocab_size: int, device: torch.device) -> None:
    arch = type(body).__name__
    ids = torch.tensor([[(7 * i + 3) % vocab_size for i in range(6)]], device=device)
    inputs: dict[int, torch.Tensor] = {}
    outputs: list[Any] = []

    def record(i: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            h = _hidden_of(args, kwargs)
            if h is not None:
                inputs.setdefault(i, h.detach().clone())
        return hook

    handles = [m.register_forward_pre_hook(record(i), with_kwargs=True) for i, m in enumerate(layers)]
    handles.append(norm.register_forward_pre_hook(record(n_layers), with_kwargs=True))
    handles.append(layers[0].register_forward_hook(lambda m, a, o: outputs.append(o)))
    try:
        with torch.no_grad():
            full = body(input_ids=ids, use_cache=False).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    if sorted(inputs) != list(range(n_layers + 1)):
        raise AlignlensError(f"{arch}: a full pass did not call every decoder block and the final norm with the "
                             "hidden states (entering the decoder at a block is not supported for this architecture)")
    out = outputs[0] if outputs else None
    if isinstance(out, tuple):
        _TUPLE_OUTPUT[body] = True
    elif not isinstance(out, torch.Tensor):
        raise AlignlensError(f"{arch}: a decoder block returns {type(out).__name__}, not a tensor or tuple "
                             "(entering the decoder at a block is not supported for this architecture)")
    tol = _tolerance(full.dtype)
    for start in sorted({0, n_layers // 2, n_layers}):
        for cached in (0, 4):
            residual = inputs[start][:, cached:]
            ran: list[str] = []
            kwargs: dict[str, Any] = {"use_cache": False}
            guards: list[Any] = []
            try:
                if cached:
                    with torch.no_grad():
                        cache = body(input_ids=ids[:, :cached], use_cache=True).past_key_values
                    kwargs = {"past_key_values": cache, "use_cache": True, "attention_mask": torch.ones_like(ids),
                              "position_ids": torch.arange(cached, ids.shape[1], device=device).unsqueeze(0)}
                guards = [sub.register_forward_pre_hook(lambda m, a, name=f"block {i}": ran.append(name))
                          for i in range(start) for sub in layers[i].modules() if sub is not layers[i]]
                with torch.no_grad(), entered_at(body, layers, norm, start, residual):
                    got = body(inputs_embeds=residual, **kwargs).last_hidden_state
            except AlignlensError:
                raise
            except Exception as exc:  # noqa: BLE001 - one clear line
                raise AlignlensError(f"{arch}: entering the decoder at block {start} failed "
                                     f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
            finally:
                for g in guards:
                    g.remove()
            if ran:
                raise AlignlensError(f"{arch}: entering the decoder at block {start} still computed {ran[0]} "
                                     "(its decoder loop calls blocks' parts outside their forward)")
            want = full[:, cached:]
            err = float((got.float() - want.float()).abs().max()) / max(1.0, float(want.float().abs().max()))
            if not err <= tol:
                raise AlignlensError(f"{arch}: entering the decoder at block {start} with a given residual does not "
                                     f"reproduce a full pass (relative difference {err:.2g}"
                                     f"{', with a key/value cache' if cached else ''}); cross-model patching is "
                                     "not supported for this architecture")
