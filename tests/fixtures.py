"""Tiny random models for unit tests and smoke runs (not part of the library).

`tiny_model` wraps a randomly initialised tiny HF model (`tiny_hf_model`) and a tiny trained
tokenizer (`tiny_tokenizer`) in a TransformerBridge; `save_tiny_base` writes such a model as an
HF folder usable wherever a model spec is accepted. Tests import this module as `fixtures`
(pytest puts tests/ on sys.path); bench scripts add tests/ to sys.path themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from alignlens import data
from alignlens.model import LoadedModel, prepare_tokenizer, wrap_bridge


def tiny_tokenizer(kind: str = "sentencepiece", vocab_size: int = 400, corpus: list[str] | None = None) -> Any:
    """A small trained tokenizer: `sentencepiece` (Metaspace + byte fallback, like Gemma/Llama 2)
    or `bytelevel` (byte-level BPE, like GPT-2/Llama 3/Qwen). Prepends <bos> like Gemma."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus is None:
        corpus = []
        for task in data.BUNDLED_TASKS:
            spec = data.load_task(task)
            for lang in ("en", "de", "zh", "hi", "ru"):
                corpus.append(spec.prompts[lang].demonstrations)
                corpus += [data.build_prompt(spec, lang, it) for it in data.load_items(spec, lang, limit=3)]
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    if kind == "sentencepiece":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size + 256, special_tokens=specials + byte_tokens,
                                      show_progress=False)
    elif kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size + 256, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    # The post-processor already prepends <bos>; say so, so TransformerLens keeps this object.
    fast.init_kwargs.update(name_or_path=f"tiny-{kind}", add_bos_token=True)
    return prepare_tokenizer(fast)


def tiny_hf_model(arch: str, tokenizer: Any, seed: int = 0, n_layers: int = 2, **config_overrides: Any) -> torch.nn.Module:
    """A randomly initialised tiny HF causal LM (float32, eval mode) sized for `tokenizer`.

    `arch`: `gemma3` (gated GELU MLP, sliding-window layers, tied embeddings), `llama` (gated
    SiLU MLP) or `gpt2` (plain MLP, learned positions). Weights ~ N(0, 0.2), larger than the
    default init, so outputs are far from uniform and tests can tell right from wrong.
    """
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, LlamaConfig

    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    if arch == "gemma3":
        cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=n_layers,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                               max_position_embeddings=2048, sliding_window=64,
                               layer_types=(["sliding_attention"] * (n_layers - 1) + ["full_attention"]),
                               **common)
    elif arch == "llama":
        cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=n_layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, **common)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=64, n_layer=n_layers, n_head=4, n_positions=2048, **common)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}")
    for key, value in config_overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    hf_model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    hf_model.config.architectures = [type(hf_model).__name__]  # the bridge picks its adapter by this
    with torch.no_grad():
        for p in hf_model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return hf_model.eval()


def tiny_model(arch: str = "gemma3", tokenizer: str = "sentencepiece", seed: int = 0,
               dtype: torch.dtype = torch.float32, n_layers: int = 2) -> LoadedModel:
    """A tiny random model (`tiny_hf_model`) with a tiny trained tokenizer, wrapped in a bridge (unit tests)."""
    tok = tiny_tokenizer(tokenizer)
    hf_model = tiny_hf_model(arch, tok, seed, n_layers)
    dev = torch.device("cpu")
    bridge = wrap_bridge(f"tiny-{arch}", hf_model, tok, dev, dtype)
    return LoadedModel(bridge, tok, f"tiny-{arch}", f"tiny-{arch}", None, dev, dtype, None, {"tiny": True})


def save_tiny_base(folder: str | Path, arch: str = "gemma3", seed: int = 0, vocab_size: int = 1000,
                   **config_overrides: Any) -> Path:
    """Write a plain tiny random HF model + tokenizer folder, usable as `model_spec` in tests and
    smoke runs. The model is `tiny_hf_model`; the tokenizer is trained on
    question-translation text (de, es, it, en) so examples stay short."""
    corpus = []
    for p in data.load_question_translation(["de", "es", "it"], per_language=300, seed=1234):
        corpus += [p.input, p.answer]
    tok = tiny_tokenizer("sentencepiece", vocab_size=vocab_size, corpus=corpus)
    model = tiny_hf_model(arch, tok, seed, **config_overrides)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tree_snapshot(folder: Path) -> dict:
    """Every path under `folder` with its bytes (files), mode and modification time: equal
    snapshots mean nothing was written, replaced or removed."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mode,
                                         p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*"))}


# ---- pytest fixtures shared by the training tests (import them into a test module to use them) ----


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run several times faster on one thread (and the machine is shared); autouse in
    the modules that import it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny random gemma3 base model folder (`save_tiny_base`), one per test module."""
    return str(save_tiny_base(tmp_path_factory.mktemp("tiny") / "gemma3", "gemma3", seed=0))


def lora_merged(hf_model: torch.nn.Module, targets: tuple[str, ...] = ("q_proj", "v_proj"), r: int = 4, seed: int = 1,
                scale: float = 0.2) -> torch.nn.Module:
    """`hf_model` changed by a merged random LoRA on the `targets` modules only (peft; B ~ N(0,
    scale²) instead of peft's zeros, so the update is not zero): a stand-in for an aligned model
    whose difference lies in those projections (eval mode, plain HF model, ready to wrap)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(hf_model, LoraConfig(r=r, lora_alpha=r, target_modules=list(targets), lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return peft_model.merge_and_unload().eval()


def tiny_pair(arch: str = "gemma3", tokenizer: str = "sentencepiece", seed: int = 0, n_layers: int = 2,
              targets: tuple[str, ...] = ("q_proj", "v_proj"), **config_overrides: Any) -> tuple[LoadedModel, LoadedModel]:
    """(base, aligned): a tiny random model (`tiny_hf_model`, with `config_overrides`) and the same
    model changed by a merged random LoRA on `targets` (`lora_merged`), sharing one tokenizer object."""
    tok = tiny_tokenizer(tokenizer)
    dev = torch.device("cpu")
    out = []
    for name, hf in ((f"tiny-{arch}", tiny_hf_model(arch, tok, seed, n_layers, **config_overrides)),
                     (f"tiny-{arch}-aligned",
                      lora_merged(tiny_hf_model(arch, tok, seed, n_layers, **config_overrides), targets))):
        out.append(LoadedModel(wrap_bridge(name, hf, tok, dev, torch.float32), tok, name, name, None, dev,
                               torch.float32, None, {"tiny": True}))
    return out[0], out[1]
