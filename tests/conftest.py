"""Shared fixtures: tiny random models (unit tests) and the real default model (integration)."""

from __future__ import annotations

import warnings

import pytest
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_gemma():
    from fixtures import tiny_model

    return tiny_model("gemma3", "sentencepiece")


@pytest.fixture(scope="session")
def tiny_llama_bytelevel():
    from fixtures import tiny_model

    return tiny_model("llama", "bytelevel")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from fixtures import tiny_model

    return tiny_model("gpt2", "bytelevel")


@pytest.fixture(scope="session")
def gemma():
    """The real embedded default model (float32, CPU). Converted once into the cache."""
    from alignlens.model import load_model

    return load_model("gemma-3-270m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def gemma_float64():
    """Independent reference: the same weights in a plain transformers model, float64 (no bridge)."""
    from transformers import AutoModelForCausalLM

    from alignlens.model import ensure_default_model

    return AutoModelForCausalLM.from_pretrained(str(ensure_default_model()), dtype=torch.float64).eval()
