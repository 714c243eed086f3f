"""The scoring engine: the model's unembedding and (below) the batched few-shot forward pass.

`Unembed` is the one place that turns hidden states into next-token logits (final norm, LM
head, final-logit soft-cap where the config has one). Evaluation, the logit lens and the
training loss all use it.
"""

from __future__ import annotations

import torch

from alignlens import AlignlensError

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
