"""LoRA adapters of `alignlens train` outputs: the weight change ΔW they make, and W + α·ΔW in place.

An `alignlens train` output with LoRA has `adapter/` in peft's format: `adapter_config.json` and
`adapter_model.safetensors` with, per adapted module `<m>` of the base HF model (e.g.
`model.layers.0.self_attn.q_proj`), `base_model.model.<m>.lora_A.weight` [r, in] and
`base_model.model.<m>.lora_B.weight` [out, r]. Its weight change is

    ΔW = B @ A · scaling            scaling = lora_alpha / r   (lora_alpha / sqrt(r) with use_rslora)

transposed when `fan_in_fan_out` (GPT-2's Conv1D stores [in, out]); `rank_pattern` and
`alpha_pattern` give per-module r and lora_alpha, matched as peft matches them
(`peft.utils.other.get_pattern_key`). The product is taken in float32 in the order peft's
`get_delta_weight` takes it ((B @ A), transposed, times scaling), so W + 1·ΔW equals its merge;
the trainer's streamed merge (`export.merged_tensors`) uses `lora_delta` itself.

Only plain LoRA on Linear (or Conv1D) layers is read: DoRA, LoRA biases, embedding or convolution
LoRA, extra saved modules (`modules_to_save`), layer replication, trainable tokens and other peft
methods (IA3, LoHa, ...) are refused with the adapter named.

`read_adapter(path)` -> `LoraAdapter` (ΔW per module, float32, CPU); `scaled_weights(model,
adapter, alpha)` sets the touched weights of a loaded model to W + α·ΔW and restores W exactly
(a copy of only those weights) when the block ends.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignlens import AlignlensError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: peft's prefix of every key of a causal LM's saved adapter (PeftModel.base_model.model = the HF model).
PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
# Options that change what the adapter computes beyond B @ A * scaling: refused when set.
_UNSUPPORTED = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "LoRA biases (lora_bias)",
    "modules_to_save": "fully trained extra modules (modules_to_save)",
    "layer_replication": "layer replication (layer_replication)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "bias": "trained biases of the base layers (bias)",
}


def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float, fan_in_fan_out: bool = False) -> torch.Tensor:
    """ΔW of one LoRA layer, float32: (B @ A), transposed when `fan_in_fan_out`, times `scaling`.

    a: lora_A weight [r, in]; b: lora_B weight [out, r]. Returns [out, in] ([in, out] with
    `fan_in_fan_out`). The same operations, in the same order, as peft's `get_delta_weight` (so W + ΔW
    is bit-identical to its merge in float32); `export.merged_tensors` merges with it."""
    delta = b.float() @ a.float()
    return (delta.T if fan_in_fan_out else delta) * scaling


@dataclass
class LoraAdapter:
    """A peft LoRA adapter read from disk: `deltas` maps each adapted module of the base HF model
    (its HF name, e.g. `model.layers.3.self_attn.v_proj`) to ΔW, float32 on the CPU, shaped as that
    module's `weight`. `scaling`, `rank`: per module. `config`: adapter_config.json as read;
    `base_model`: the base model the training manifest records (spec, path, hash), None without one."""

    path: Path
    deltas: dict[str, torch.Tensor]
    scaling: dict[str, float]
    rank: dict[str, int]
    config: dict[str, Any]
    base_model: dict | None = None
    targets: tuple[str, ...] = field(default_factory=tuple)

    def weight_names(self) -> list[str]:
        """The HF parameter names the adapter changes (`<module>.weight`), in file order."""
        return [f"{m}.weight" for m in self.deltas]


def adapter_folder(path: str | Path) -> Path:
    """The adapter folder of `path`: an `alignlens train` output (its `adapter/`) or an adapter folder
    itself. AlignlensError when there is none (e.g. a full fine-tuning run, which has no adapter)."""
    p = Path(path).expanduser()
    for folder in (p / "adapter", p):
        if (folder / ADAPTER_CONFIG).is_file():
            return folder
    if (p / "merged").is_dir():
        raise AlignlensError(f"{p}: this training output has no adapter/ (full fine-tuning?); the weight-scale dose "
                             "response needs a LoRA run")
    raise AlignlensError(f"{p}: no LoRA adapter here (expected {p / 'adapter' / ADAPTER_CONFIG} or {p / ADAPTER_CONFIG})")


def _pattern_value(pattern: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    """peft's per-module override: the first key of `pattern` matching the end of `module`
    (`peft.utils.other.get_pattern_key`), else `default`."""
    if not pattern:
        return default
    from peft.utils.other import get_pattern_key

    return pattern.get(get_pattern_key(pattern.keys(), module), default)


def _check_config(cfg: dict, where: Path) -> None:
    kind = str(cfg.get("peft_type", "")).upper()
    if kind != "LORA":
        raise AlignlensError(f"{where}: peft_type {cfg.get('peft_type')!r} is not LoRA; only LoRA adapters can be "
                             "scaled (W + α·B·A·lora_alpha/r)")
    for key, what in _UNSUPPORTED.items():
        value = cfg.get(key)
        if value not in (None, False, [], {}, "none"):
            raise AlignlensError(f"{where}: {what} is set ({value!r}); only plain LoRA (W + B·A·lora_alpha/r) is "
                                 "supported")
    for key in ("r", "lora_alpha"):
        v = cfg.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise AlignlensError(f"{where}: {key} must be a positive number, got {v!r}")


def read_adapter(path: str | Path) -> LoraAdapter:
    """Read a LoRA adapter (`adapter_folder(path)`): ΔW per adapted module (`lora_delta`, float32, CPU).

    Raises AlignlensError naming the file for: no adapter, a non-LoRA or DoRA/bias/... adapter, a
    missing or unreadable adapter_model.safetensors, a key that is not a plain Linear LoRA weight
    (embedding LoRA, saved modules), a module with only A or only B, a rank that differs from the
    config's (after rank_pattern) or non-finite weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = adapter_folder(path)
    cfg_path = folder / ADAPTER_CONFIG
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AlignlensError(f"{cfg_path}: cannot read the adapter config ({exc})") from None
    if not isinstance(cfg, dict):
        raise AlignlensError(f"{cfg_path}: should be a JSON object")
    _check_config(cfg, cfg_path)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        other = [p.name for p in folder.glob("adapter_model.*")]
        hint = f" (found {', '.join(other)}; re-save it with safetensors)" if other else ""
        raise AlignlensError(f"{weights}: missing{hint}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise AlignlensError(f"{weights}: cannot read ({exc})") from None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if not key.startswith(PEFT_PREFIX) or m is None:
            raise AlignlensError(f"{weights}: tensor {key!r} is not a plain LoRA weight "
                                 f"({PEFT_PREFIX}<module>.lora_A/lora_B.weight); embedding LoRA and saved modules are "
                                 "not supported")
        if t.dim() != 2:
            raise AlignlensError(f"{weights}: {key} has shape {tuple(t.shape)}; only Linear LoRA (2-D A and B) is "
                                 "supported")
        pairs.setdefault(m["module"][len(PEFT_PREFIX):], {})[m["ab"]] = t
    if not pairs:
        raise AlignlensError(f"{weights}: no LoRA weights")
    fan = bool(cfg.get("fan_in_fan_out", False))
    rslora = bool(cfg.get("use_rslora", False))
    deltas, scaling, rank = {}, {}, {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AlignlensError(f"{weights}: module {module} has lora_{'A' if 'A' in ab else 'B'} but no "
                                 f"lora_{'B' if 'A' in ab else 'A'}")
        a, b = ab["A"], ab["B"]
        r = int(_pattern_value(cfg.get("rank_pattern"), module, cfg["r"]))
        if a.shape[0] != r or b.shape[1] != r:
            raise AlignlensError(f"{weights}: module {module} has A {tuple(a.shape)} and B {tuple(b.shape)}, not "
                                 f"rank {r} as {ADAPTER_CONFIG} says")
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, cfg["lora_alpha"]))
        s = alpha / math.sqrt(r) if rslora else alpha / r
        d = lora_delta(a, b, s, fan)
        if not bool(torch.isfinite(d).all()):
            raise AlignlensError(f"{weights}: module {module}: non-finite LoRA weights")
        deltas[module], scaling[module], rank[module] = d, s, r
    return LoraAdapter(folder, deltas, scaling, rank, cfg, _training_base(folder),
                       tuple(cfg.get("target_modules") or ()) if isinstance(cfg.get("target_modules"), list) else ())


def _training_base(adapter_dir: Path) -> dict | None:
    """The base model an `alignlens train` output's manifest records (None without a manifest)."""
    manifest = adapter_dir.parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        m = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    base = m.get("base_model") if isinstance(m, dict) else None
    return base if isinstance(base, dict) else None


# ---- applying ΔW to a loaded model ----------------------------------------------------------

#: The path segment TransformerLens's bridge inserts between a hooked component and the HF module it wraps.
_BRIDGE_SEGMENT = "_original_component"


def hf_parameter_name(name: str) -> str:
    """A parameter's name as the plain HF model names it: the bridge's `_original_component`
    segments removed (`model.layers.0._original_component.self_attn...` -> `model.layers.0.self_attn...`)."""
    return ".".join(p for p in name.split(".") if p != _BRIDGE_SEGMENT)


def adapter_parameters(hf_model: torch.nn.Module, adapter: LoraAdapter) -> dict[str, torch.nn.Parameter]:
    """{module: its weight Parameter} in `hf_model` (a plain HF model or a bridge's
    `original_model`) for every module `adapter` changes. AlignlensError naming the module when the
    model has no such weight or its shape differs from ΔW's (an adapter of another base model)."""
    params = {hf_parameter_name(n): p for n, p in hf_model.named_parameters(remove_duplicate=False)}
    out = {}
    for module, delta in adapter.deltas.items():
        p = params.get(f"{module}.weight")
        if p is None:
            raise AlignlensError(f"{adapter.path}: adapts module {module}, which this model does not have (an adapter "
                                 "of another base model?)")
        if tuple(p.shape) != tuple(delta.shape):
            raise AlignlensError(f"{adapter.path}: module {module} has weight {tuple(p.shape)} in this model but ΔW "
                                 f"{tuple(delta.shape)} (an adapter of another base model?)")
        out[module] = p
    return out


@contextmanager
def scaled_weights(hf_model: torch.nn.Module, adapter: LoraAdapter, alpha: float) -> Iterator[None]:
    """Inside the block, every weight `adapter` changes is W + alpha·ΔW (computed in float32 from
    the original W, cast to the weight's dtype and device); afterwards the original W is copied back
    (bit-identical: a copy of only the touched weights is kept). alpha = 0 touches nothing. Use on a
    loaded model's `hf_model` (the bridge runs the same parameters)."""
    if not math.isfinite(alpha):
        raise AlignlensError(f"alpha must be a finite number, got {alpha}")
    params = adapter_parameters(hf_model, adapter)
    if alpha == 0:
        yield
        return
    saved = {m: p.detach().clone() for m, p in params.items()}
    try:
        with torch.no_grad():
            for m, p in params.items():
                p.copy_((saved[m].float() + alpha * adapter.deltas[m].to(p.device)).to(p.dtype))
        yield
    finally:
        with torch.no_grad():
            for m, p in params.items():
                p.copy_(saved[m])
