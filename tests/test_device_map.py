"""Models larger than one device: `--device-map`/`--max-memory` (accelerate placement at load time).

On this CPU-only machine the split is cpu/disk: some blocks' weights stay on disk (meta tensors in
the model, read back by accelerate's hooks for each forward). The outputs must be byte-identical to
the plain load, the weights must never be copied whole into the model (no `.to()` after the load),
and the bridge must take the dispatched model as placed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignlens import AlignlensError
from alignlens.model import check_placement, load_model, parse_device_map, parse_max_memory
from fixtures import save_tiny_base

N_LAYERS = 3
#: layers 1 and 2 offloaded to disk; embedding, layer 0, final norm and head on the CPU
DISK_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
            "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("models") / "tiny3", "gemma3", seed=0, n_layers=N_LAYERS)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "alignlens", *args], capture_output=True, text=True, timeout=900,
                          env=full_env)


# ---- parsing and refusals (no model) ---------------------------------------------------------


def test_parse_device_map_forms(tmp_path):
    assert parse_device_map(None) is None and parse_device_map("") is None
    assert parse_device_map("auto") == "auto" and parse_device_map("balanced") == "balanced"
    assert parse_device_map('{"model.layers.0": 0, "lm_head": "1", "model.norm": "cpu"}') == \
        {"model.layers.0": 0, "lm_head": 1, "model.norm": "cpu"}
    f = tmp_path / "map.json"
    f.write_text(json.dumps(DISK_MAP))
    assert parse_device_map(str(f)) == DISK_MAP
    with pytest.raises(AlignlensError, match="not valid JSON"):
        parse_device_map("{model: 0}")
    with pytest.raises(AlignlensError, match="module 'lm_head'.*'gpu'"):
        parse_device_map('{"lm_head": "gpu"}')
    with pytest.raises(AlignlensError, match="not one of auto"):
        parse_device_map("everywhere")
    with pytest.raises(AlignlensError, match="non-empty JSON object"):
        parse_device_map("{}")


def test_parse_max_memory():
    assert parse_max_memory("0=20GiB,cuda:1=20GiB,cpu=60GiB") == {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}
    assert parse_max_memory(None) is None
    for bad, msg in (("0:20GiB", "use device=size"), ("cpu=lots", "needs a number and a unit"),
                     ("cpu=1GB,cpu=2GB", "given twice"), ("gpu=1GB", "not a GPU index")):
        with pytest.raises(AlignlensError, match=msg):
            parse_max_memory(bad)


def test_check_placement_refusals(monkeypatch):
    check_placement(None, None)
    check_placement("auto", "cpu=1GB")
    with pytest.raises(AlignlensError, match="--max-memory needs --device-map"):
        check_placement(None, "cpu=1GB")
    with pytest.raises(AlignlensError, match="exclude each other"):
        check_placement("auto", None, "cpu")
    with pytest.raises(AlignlensError, match="every module on disk"):
        check_placement('{"": "disk"}', None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(AlignlensError, match="under torchrun"):
        check_placement("auto", None)


# ---- the dispatched load ---------------------------------------------------------------------


def test_disk_split_load_keeps_placement_and_scores_identically(tiny3):
    from alignlens.engine import score_prompts

    plain = load_model(str(tiny3), device="cpu", dtype="float32")
    split = load_model(str(tiny3), dtype="float32", device_map=json.dumps(DISK_MAP))
    hf = split.hf_model
    # the offloaded blocks' weights were never materialised in the model (no .to() undid the map)
    assert hf.hf_device_map == DISK_MAP and split.info["device_map"] == DISK_MAP
    assert all(p.device.type == "meta" for p in hf.model.layers[1].parameters())
    assert all(p.device.type == "cpu" for p in hf.model.layers[0].parameters())
    assert split.device == torch.device("cpu") and split.describe()["device_map"] == DISK_MAP
    # the bridge drives the dispatched model (its hooks fire on offloaded blocks)
    seen = []
    hook = ("blocks.2.hook_resid_post", lambda x, hook: seen.append(x.shape) or x)
    queries = ["a b c", "zwei drei", "x"]
    args = ("Ejemplo: uno\n", queries, [[5, 6], [7]])
    a = score_prompts(plain, *args, batch_size=2)
    b = score_prompts(split, *args, batch_size=2, fwd_hooks=[hook])
    assert seen and torch.equal(a, b)


def test_cli_eval_and_analyze_byte_identical_with_disk_offload(tiny3, tmp_path):
    common = ("--model", str(tiny3), "--tasks", "emotion", "--languages", "en,de,hi", "--limit", "3",
              "--batch-size", "2", "--dtype", "float32")
    dm = json.dumps(DISK_MAP)
    for name, extra in (("plain", ("--device", "cpu")), ("split", ("--device-map", dm))):
        proc = run_cli("eval", *common, *extra, "--out", str(tmp_path / f"eval-{name}"))
        assert proc.returncode == 0, proc.stderr
        proc = run_cli("analyze", *common, *extra, "--similarity-resamples", "20", "--no-report",
                       "--save-activations", "--out", str(tmp_path / f"an-{name}"))
        assert proc.returncode == 0, proc.stderr
    same = lambda rel: (tmp_path / "eval-plain" / rel).read_bytes() == (tmp_path / "eval-split" / rel).read_bytes()  # noqa: E731
    assert same("predictions.jsonl") and same("summary.json")
    for rel in ("predictions.jsonl", "summary.json", "logit_lens.json", "similarity.json", "neurons.json",
                "neurons.safetensors", "activations/emotion__hi.safetensors"):
        assert (tmp_path / "an-plain" / "base" / rel).read_bytes() == (tmp_path / "an-split" / "base" / rel).read_bytes(), rel
    manifest = json.loads((tmp_path / "an-split" / "base" / "manifest.json").read_text())
    assert manifest["model"]["device_map"] == DISK_MAP


def test_cli_refuses_max_memory_without_map(tiny3, tmp_path):
    proc = run_cli("eval", "--model", str(tiny3), "--tasks", "emotion", "--languages", "en", "--limit", "1",
                   "--max-memory", "cpu=1GB")
    assert proc.returncode == 2 and "--max-memory needs --device-map" in proc.stderr
