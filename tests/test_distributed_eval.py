"""Data-parallel eval/analyze under torchrun: the same results as one process.

Every rank plans the same batches per (task, language) (shared-prefix length, length-sorted
order, batches), runs whole batches (`distributed.assign_batches`, balanced by padded tokens), and
rank 0 gathers rows and counters and alone writes. Both runs use OMP_NUM_THREADS=1. The body runs
the same batches either way, but each process pools other batches' rows into its LM-head calls, so
the two are different computational paths: floats are compared within `compare.PROB_ATOL` (bit
equality across paths depends on the CPU's BLAS kernels), integers and strings exactly. Units here have 1 batch (fewer than the 2 ranks: rank 1
has no work and must still join every collective) or 3 batches (odd: an uneven split)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignlens.distributed import assign_batches
from compare import assert_files_close
from fixtures import save_tiny_base

ANALYZED = ("predictions.jsonl", "summary.json", "logit_lens.json", "similarity.json", "neurons.json",
            "neurons.safetensors", "activations/emotion__en.safetensors", "activations/emotion__hi.safetensors")
VOLATILE = {"started", "finished", "timing_s", "command", "world_size", "torch_threads"}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "ALIGNLENS_PROGRESS": "off"}


def run(nproc: int, *args: str) -> subprocess.CompletedProcess:
    """`python -m alignlens ARGS` alone, or under `torch.distributed.run --nproc_per_node=nproc` (gloo)."""
    launch = [sys.executable, "-m", "alignlens"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        "-m", "alignlens"]
    return subprocess.run([*launch, *args], capture_output=True, text=True, timeout=900, env=_env())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("models") / "tiny", "gemma3", seed=0)


def test_assign_batches_whole_balanced_deterministic():
    assert assign_batches([5], 2) == [0]  # fewer batches than ranks: rank 1 gets none
    assert assign_batches([], 3) == []
    owner = assign_batches([4, 4, 4, 12, 1], 2)  # largest first to the least loaded rank
    assert owner == [1, 1, 1, 0, 0]
    loads = [sum(c for c, r in zip([4, 4, 4, 12, 1], owner) if r == k) for k in range(2)]
    assert loads == [13, 12]
    assert assign_batches([3, 3, 3], 2) == [0, 1, 0]  # ties: plan order, lower rank


def _manifest_core(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VOLATILE}


def test_eval_two_ranks_equal_one_process(tiny, tmp_path):
    # 5 items, batch 2: 3 batches per language (odd; rank 0 takes 2 by tokens or 1 of the larger)
    common = ("eval", "--model", str(tiny), "--tasks", "emotion", "--languages", "en,de,hi", "--limit", "5",
              "--batch-size", "2", "--device", "cpu", "--dtype", "float32")
    for n in (1, 2):
        proc = run(n, *common, "--out", str(tmp_path / f"e{n}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in ("predictions.jsonl", "summary.json"):
        assert_files_close(tmp_path / "e1" / rel, tmp_path / "e2" / rel)
    m1, m2 = (json.loads((tmp_path / f"e{n}" / "manifest.json").read_text()) for n in (1, 2))
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert _manifest_core(tmp_path / "e1" / "manifest.json") == _manifest_core(tmp_path / "e2" / "manifest.json")
    assert len((tmp_path / "e2" / "predictions.jsonl").read_text().splitlines()) == 15


def test_analyze_two_ranks_equal_one_process_with_an_empty_rank(tiny, tmp_path):
    # 3 items, batch 3: one batch per (task, language) and pass, so rank 1 computes nothing
    common = ("analyze", "--model", str(tiny), "--tasks", "emotion", "--languages", "en,de,hi", "--limit", "3",
              "--batch-size", "3", "--device", "cpu", "--dtype", "float32", "--similarity-resamples", "20",
              "--save-activations", "--no-report")
    for n in (1, 2):
        proc = run(n, *common, "--out", str(tmp_path / f"a{n}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in ANALYZED:
        assert_files_close(tmp_path / "a1" / "base" / rel, tmp_path / "a2" / "base" / rel)
    assert json.loads((tmp_path / "a2" / "base" / "manifest.json").read_text())["world_size"] == 2
    assert _manifest_core(tmp_path / "a1" / "base" / "manifest.json") == \
        _manifest_core(tmp_path / "a2" / "base" / "manifest.json")
    # --resume across ranks (of a run marked interrupted): every shard is there, so the resumed run
    # recomputes nothing: the same path as the run that wrote them, so the analyses come out byte-identical
    before = (tmp_path / "a2" / "base" / "neurons.json").read_bytes()
    manifest = tmp_path / "a2" / "base" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "status": "running"}), encoding="utf-8")
    proc = run(2, *common, "--out", str(tmp_path / "a2"), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "a2" / "base" / "neurons.json").read_bytes() == before


SPLIT_SCRIPT = r'''
import json, os, sys, torch
sys.path.insert(0, sys.argv[2])
torch.set_num_threads(1)
from alignlens import data, distributed
from alignlens.capture.capturer import Capturer
from alignlens.evaluate import evaluate_language
from alignlens.model import load_model
from alignlens.pipeline import gather_capture

class Rows:
    def __init__(self): self.rows = []
    def hooks(self, batch): self.rows += batch.rows; return []
    def after_batch(self, batch): pass

with distributed.process_group("cpu") as w:
    m = load_model(sys.argv[1], device="cpu", dtype="float32")
    spec = data.load_task("emotion")
    items = data.load_items(spec, "de", limit=7)
    seen, cap = Rows(), Capturer(m, spec, "de")
    r = evaluate_language(m, spec, "de", items, batch_size=2, probes=[seen, cap])
    own = cap.capture.last.indices().tolist()
    merged = gather_capture(cap.capture)
    out = {"rank": w.rank, "rows": sorted(seen.rows), "own": own, "merged": merged.last.indices().tolist(),
           "tokens": int(merged.neurons.n_tokens_per_layer[0]), "probs": r.probs.tolist()}
    with open(f"{sys.argv[3]}/rank{w.rank}.json", "w") as f:  # one file per rank: their stdout lines interleave
        json.dump(out, f)
# skip the interpreter's teardown, as `alignlens` does under torchrun (gloo can abort there)
sys.stdout.flush(); os._exit(0)
'''


def test_ranks_split_whole_batches_and_gather(tiny, tmp_path):
    """Each rank runs a disjoint part (whole batches), the union is every item, the gathered
    capture has all rows, and every rank returns the same full probabilities."""
    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT)
    tests_dir = str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tiny), tests_dir, str(tmp_path)], capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["rank"] for r in res] == [0, 1]
    a, b = res[0]["rows"], res[1]["rows"]
    assert a and b and not set(a) & set(b) and sorted(a + b) == list(range(7))  # 4 batches: 7 items
    assert len(a) % 2 == 0 or len(b) % 2 == 0  # whole batches of 2 (the odd one holds the short batch)
    assert res[0]["own"] == a and res[1]["own"] == b
    assert res[0]["merged"] == res[1]["merged"] == list(range(7))
    assert res[0]["tokens"] == res[1]["tokens"] > 0
    assert res[0]["probs"] == res[1]["probs"] and all(sum(p) > 0 for p in res[0]["probs"])
