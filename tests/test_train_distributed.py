"""Training under torchrun (issue 13): 2 CPU processes (gloo), 1 thread each, on a tiny model.

pytest launches `python -m torch.distributed.run --standalone --nproc_per_node=2` in a
subprocess, either on the CLI (`-m alignlens train ...`) or on this file as a worker script
(`python this_file.py worker SPEC`: `alignlens.train.train` with a callback that records each
rank's parameter hashes, can send SIGTERM, and an audit hook that records every write a rank
makes inside the output folder).

- 2 ranks x micro-batch 4 == 1 process x micro-batch 4 x grad accum 2: byte-equal step losses,
  validation losses and final adapter/merged files;
- the ranks' trainable weights are the same after every step (fails if the loss bypasses DDP);
- SIGTERM to one rank: all ranks stop after the same step, rank 0 checkpoints, `--resume`
  under torchrun gives the uninterrupted run's bytes (LoRA dropout: per-rank RNG restored);
- rank 0 alone writes in the output folder; no temporaries are left;
- --fsdp (FSDP2 on gloo): LoRA close to DDP, full fine-tuning resumed after SIGTERM to torchrun
  equals the uninterrupted run, merged weights saved in the base model's dtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
#: one tiny data setup: 36 train / 4 val examples -> 5 steps of 8 per epoch, the last with 4
#: (rank 1 has no example there and still takes part in every collective)
DATA = dict(languages=["de"], per_language=40, val_fraction=0.1, max_len=160, batch_size=4, lr=1e-2, seed=0)


# ---- the worker (run by torchrun) -----------------------------------------------------------


def _hash_trainable(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _worker(spec: dict) -> int:
    """One rank: `train` with test instrumentation; returns the exit code (143 when interrupted)."""
    rank = int(os.environ["RANK"])
    out = Path(spec["out"]).resolve()
    writes: list[list] = []
    if spec.get("audit"):
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

        def inside(path) -> bool:
            if isinstance(path, int):
                return False
            return os.path.abspath(os.fsdecode(path)).startswith(str(out) + os.sep) or os.path.abspath(
                os.fsdecode(path)) == str(out)

        def audit(event: str, args: tuple) -> None:
            if event == "open":
                path, mode, flags = args
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
                if writing and inside(path):
                    writes.append([event, os.fsdecode(path)])
            elif event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate",
                           "os.chmod", "os.symlink", "os.link"):
                if any(isinstance(a, (str, bytes, os.PathLike)) and inside(a) for a in args[:2]):
                    writes.append([event, [os.fsdecode(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]])

        sys.addaudithook(audit)

    from alignlens import RunInterrupted
    from alignlens.train import TrainConfig, train
    from alignlens.train.trainer import Trainer

    trainers: list = []
    start = Trainer.start

    def capture_start(self, ckpt=None):
        trainers.append(self)
        return start(self, ckpt)

    Trainer.start = capture_start

    def callback(record: dict) -> None:
        trainer = trainers[0]
        if spec.get("hashes"):
            with open(Path(spec["hashes"]) / f"rank{rank}.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": record["step"], "sha256": _hash_trainable(trainer.model)}) + "\n")
        term = spec.get("term")
        if term and record["step"] == term["step"] and rank == term["rank"]:
            if term["target"] == "torchrun":  # the launcher forwards SIGTERM to every worker
                os.kill(os.getppid(), signal.SIGTERM)
                for _ in range(6000):  # wait for it here, so the stop lands after this step
                    if trainer.stop.requested:
                        break
                    time.sleep(0.01)
            else:
                os.kill(os.getpid(), signal.SIGTERM)

    code = 0
    try:
        train(TrainConfig.from_preset("default", **spec["config"]), spec["model"], out, progress=False,
              callback=callback)
    except RunInterrupted as exc:
        print(f"rank {rank}: {exc}", file=sys.stderr, flush=True)
        code = exc.exit_code
    finally:
        if spec.get("audit"):
            Path(spec["audit"], f"rank{rank}.json").write_text(json.dumps(writes), encoding="utf-8")
    return code


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    sys.exit(_worker(json.loads(sys.argv[2])))


# ---- launching ------------------------------------------------------------------------------


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNLENS_PROGRESS": "off"}
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list[str], expect: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    if expect is not None:
        assert proc.returncode == expect, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stderr[-6000:]}"
    return proc


def _torchrun(*args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args], expect)


def _cli_args(model: str, out: Path, **options) -> list[str]:
    args = ["train", "--model", model, "--out", str(out), "--threads", "1"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        else:
            args += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return args


def _worker_run(spec: dict, expect: int | None = 0) -> subprocess.CompletedProcess:
    spec = {**spec, "config": {**spec["config"], "threads": 1}}
    return _torchrun(str(Path(__file__).resolve()), "worker", json.dumps(spec), expect=expect)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]


def _numbers(out: Path) -> list[tuple]:
    """(event, step, the value's JSON text) of every step and validation record."""
    rows = []
    for r in _log(out):
        if r["event"] == "step":
            rows.append(("step", r["step"], json.dumps(r["loss"]), json.dumps(r["grad_norm"])))
        elif r["event"] == "val":
            rows.append(("val", r["step"], json.dumps(r["val_loss"])))
    return rows


def _weight_files(out: Path) -> dict[str, bytes]:
    files = sorted(p for p in out.rglob("*.safetensors"))
    assert files, f"no weights in {out}"
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def _no_temporaries(out: Path) -> None:
    from alignlens.results import TEMP_PREFIX

    assert not [p for p in out.rglob("*") if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from fixtures import save_tiny_base

    return str(save_tiny_base(tmp_path_factory.mktemp("tiny") / "gemma3", "gemma3", seed=0))


# ---- DDP ------------------------------------------------------------------------------------


def test_two_ranks_equal_one_process_with_doubled_accumulation(tiny_base, tmp_path):
    """`torchrun --nproc_per_node=2 -m alignlens train -b 4` == `python -m alignlens train -b 4
    --grad-accum 2`: the same step losses, gradient norms and validation losses (their JSON text)
    and the same adapter and merged files, byte for byte (the last step of each epoch has 4
    examples: rank 1 has none)."""
    opts = dict(DATA, epochs=2, eval_every=3, save_every=0)
    _run([sys.executable, "-m", "alignlens", *_cli_args(tiny_base, tmp_path / "one", grad_accum=2, **opts)])
    _torchrun("-m", "alignlens", *_cli_args(tiny_base, tmp_path / "two", **opts))
    one, two = _numbers(tmp_path / "one"), _numbers(tmp_path / "two")
    assert len([r for r in one if r[0] == "step"]) == 10 and len([r for r in one if r[0] == "val"]) == 5
    assert one == two
    assert _weight_files(tmp_path / "one") == _weight_files(tmp_path / "two")
    m1 = json.loads((tmp_path / "one" / "manifest.json").read_text())["training"]
    m2 = json.loads((tmp_path / "two" / "manifest.json").read_text())["training"]
    assert (m1["world_size"], m1["parallel"], m1["global_batch"]) == (1, None, 8)
    assert (m2["world_size"], m2["parallel"], m2["global_batch"]) == (2, "ddp", 8)
    assert m1["steps"] == m2["steps"] == 10


@pytest.fixture(scope="module")
def ddp_lora(tiny_base, tmp_path_factory):
    """An uninterrupted 2-rank LoRA run with dropout (so each rank's RNG matters), recording every
    rank's trainable-weight hash after every step and every write it makes in the output folder."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "hashes").mkdir()
    (root / "audit").mkdir()
    config = dict(DATA, epochs=2, lora_dropout=0.1, eval_every=3, save_every=2)
    _worker_run({"model": tiny_base, "out": str(root / "run"), "config": config, "hashes": str(root / "hashes"),
                 "audit": str(root / "audit")})
    return root, config


def test_ranks_weights_stay_identical(ddp_lora):
    """After every optimizer step rank 0 and rank 1 hold the same trainable weights, and the
    weights change from step to step. (With the loss computed outside the DDP wrapper the
    gradients are not all-reduced: the ranks' hashes differ from the first step on.)"""
    root, _ = ddp_lora
    ranks = [[json.loads(x) for x in (root / "hashes" / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [row["step"] for row in ranks[0]] == list(range(1, 11))
    assert ranks[0] == ranks[1]
    assert len({row["sha256"] for row in ranks[0]}) == 10


def test_rank_zero_alone_writes(ddp_lora):
    """Rank 1 opens nothing for writing, creates, renames or removes nothing in the output folder
    (log, checkpoints, best weights, merge, manifest are rank 0's); no temporaries are left."""
    root, _ = ddp_lora
    rank0 = json.loads((root / "audit" / "rank0.json").read_text())
    rank1 = json.loads((root / "audit" / "rank1.json").read_text())
    assert rank1 == []
    written = json.dumps(rank0)
    for name in ("train_log.jsonl", "last.pt", "best.pt", "manifest.json", "merged", "adapter"):
        assert name in written, name  # the audit sees rank 0's writes
    out = root / "run"
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "manifest.json", "merged", "train_log.jsonl"]
    _no_temporaries(out)


def test_sigterm_to_one_rank_stops_all_and_resume_is_exact(ddp_lora, tiny_base, tmp_path):
    """SIGTERM to rank 1 alone after step 3: both ranks stop after step 3 (the stop is
    all-reduced), rank 0 writes the checkpoint (rank 1 writes nothing), both exit 143. Resumed
    with `torchrun ... -m alignlens train --out OUT --resume`, the run ends with the uninterrupted
    run's step losses and weight files, byte for byte (each rank's RNG state is restored: LoRA
    dropout draws differ per rank). Resuming with another number of processes is refused."""
    from alignlens import AlignlensError
    from alignlens.train import train

    root, config = ddp_lora
    out = tmp_path / "run"
    (tmp_path / "audit").mkdir()
    proc = _worker_run({"model": tiny_base, "out": str(out), "config": config, "audit": str(tmp_path / "audit"),
                        "term": {"step": 3, "rank": 1, "target": "self"}}, expect=None)
    assert proc.returncode != 0
    for rank in (0, 1):  # rank 0 received no signal: it stops on the all-reduced request
        assert f"rank {rank}: training of {out} interrupted (SIGTERM) at step 3 of 10" in proc.stderr, proc.stderr[-4000:]
    assert f"resume with: torchrun --nproc_per_node=2 -m alignlens train --out {out} --resume" in proc.stderr
    assert "exitcode  : 143" in proc.stderr
    assert json.loads((tmp_path / "audit" / "rank1.json").read_text()) == []
    assert [r["step"] for r in _log(out) if r["event"] == "interrupted"] == [3]
    assert (out / "checkpoints" / "last.pt").is_file()
    _no_temporaries(out)
    with pytest.raises(AlignlensError, match=r"cannot resume with 1 process\(es\): the checkpoint was saved by 2 "
                                             r"\(global batch 8 = batch size 4 x grad accum 1 x 2\)"):
        train(None, None, out, resume=True, progress=False)
    _torchrun("-m", "alignlens", "train", "--out", str(out), "--resume", "--threads", "1")
    assert _numbers(out) == _numbers(root / "run")
    assert _weight_files(out) == _weight_files(root / "run")
    assert json.loads((out / "manifest.json").read_text())["training"]["sessions"] == 2


# ---- FSDP -----------------------------------------------------------------------------------


def test_fsdp_lora_matches_ddp(ddp_lora, tiny_base, tmp_path):
    """--fsdp LoRA (FSDP2 on gloo): the same step losses as DDP to 1e-6 and adapter/merged
    weights to 1e-5 (FSDP sums the same two gradients; its clipping norm is summed per shard)."""
    from safetensors.torch import load_file

    root, config = ddp_lora
    _worker_run({"model": tiny_base, "out": str(tmp_path / "run"), "config": {**config, "fsdp": True}})
    fsdp, ddp = _log(tmp_path / "run"), _log(root / "run")
    losses = [[r["loss"] for r in log if r["event"] == "step"] for log in (fsdp, ddp)]
    assert len(losses[0]) == 10 and max(abs(a - b) for a, b in zip(*losses)) < 1e-6
    for sub in ("adapter/adapter_model.safetensors", "merged/model.safetensors"):
        a, b = load_file(tmp_path / "run" / sub), load_file(root / "run" / sub)
        assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype for k in a)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5, sub
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["training"]["parallel"] == "fsdp"
    _no_temporaries(tmp_path / "run")


@pytest.fixture(scope="module")
def bf16_base(tiny_base, tmp_path_factory):
    """The tiny base saved in bfloat16 (its 'model dtype')."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("bf16") / "base"
    AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(folder)
    return str(folder)


def test_fsdp_full_finetuning_resumes_exactly_and_saves_the_model_dtype(bf16_base, tmp_path):
    """--fsdp --full on a bfloat16 base: SIGTERM to torchrun after step 2 (it forwards the signal
    to both ranks) -> both stop after step 2, sharded checkpoint (each rank its shard files);
    --resume gives the uninterrupted run's log numbers and merged files byte for byte; merged/ is
    in bfloat16 and loads with alignlens.model.load_model; it is close to one process's float32
    run with grad accum 2."""
    from safetensors.torch import load_file

    from alignlens.model import load_hf
    from alignlens.train import TrainConfig, train

    config = dict(DATA, full=True, lr=1e-3, fsdp=True, eval_every=2, save_every=3)
    _worker_run({"model": bf16_base, "out": str(tmp_path / "whole"), "config": config})
    out = tmp_path / "stopped"
    proc = _worker_run({"model": bf16_base, "out": str(out), "config": config,
                        "term": {"step": 2, "rank": 0, "target": "torchrun"}}, expect=None)
    assert proc.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: training of {out} interrupted (SIGTERM) at step 2 of 5" in proc.stderr, proc.stderr[-4000:]
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["sharded"]["last"] == "last-step2.dcp"
    assert sorted(p.name for p in (out / "checkpoints" / "last-step2.dcp").iterdir() if p.suffix == ".distcp") == [
        "__0_0.distcp", "__1_0.distcp"]
    _no_temporaries(out)
    _torchrun("-m", "alignlens", "train", "--out", str(out), "--resume", "--threads", "1")
    assert _numbers(out) == _numbers(tmp_path / "whole")
    assert _weight_files(out) == _weight_files(tmp_path / "whole")
    merged = load_file(out / "merged" / "model.safetensors")
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    assert json.loads((out / "merged" / "config.json").read_text())["dtype"] == "bfloat16"
    model, _, info = load_hf(str(out), "cpu", "float32")
    assert info["architecture"] == "Gemma3ForCausalLM"
    ref = train(TrainConfig.from_preset("default", **{**config, "fsdp": False, "grad_accum": 2, "threads": 1}),
                bf16_base, tmp_path / "one", progress=False)
    assert ref.steps == 5
    one = load_file(tmp_path / "one" / "merged" / "model.safetensors")
    assert one.keys() == merged.keys()
    for k in one:  # bfloat16 resolution: 2^-8 relative
        assert torch.allclose(one[k].to(torch.bfloat16).float(), merged[k].float(), rtol=1e-2, atol=1e-3), k


# ---- errors and helpers (one process) -------------------------------------------------------


def test_fsdp_without_torchrun_is_refused(tiny_base, tmp_path):
    from alignlens import AlignlensError
    from alignlens.train import TrainConfig, train

    with pytest.raises(AlignlensError, match=r"--fsdp shards the model over the processes of a torchrun launch"):
        train(TrainConfig.from_preset("default", **DATA, fsdp=True), tiny_base, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_world_from_environment():
    from alignlens import AlignlensError
    from alignlens.distributed import World, env_world, rank_device

    assert env_world({}) == World(0, 0, 1) and env_world({}).is_main and not env_world({}).distributed
    assert env_world({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 1, 4)
    with pytest.raises(AlignlensError, match="WORLD_SIZE='two' is not a whole number"):
        env_world({"WORLD_SIZE": "two"})
    with pytest.raises(AlignlensError, match="RANK=2 is not below WORLD_SIZE=2"):
        env_world({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(AlignlensError, match="WORLD_SIZE=2 is set but RANK is not"):
        env_world({"WORLD_SIZE": "2"})
    assert rank_device(torch.device("cpu")) == torch.device("cpu")


def test_one_process_helpers_are_identities():
    from alignlens import distributed

    assert not distributed.initialized() and distributed.world().size == 1 and distributed.is_main()
    assert distributed.sum_ints([1, 2]) == [1, 2] and distributed.exact_float_sums([0.1, None]) == [0.1, 0.0]
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}] and distributed.any_flag(True)
    assert distributed.on_main(lambda: 5) == 5 and distributed.agree(lambda: 6) == 6
    with distributed.process_group("cpu") as world:  # no WORLD_SIZE: nothing started
        assert world.size == 1 and not distributed.initialized()


def test_sharded_safetensors_load_as_one_model(tiny_base, tmp_path):
    """write_safetensors_shards with a small file limit: several files plus the HF index; the
    folder loads with transformers to the same weights."""
    from transformers import AutoModelForCausalLM

    from alignlens.train.checkpoint import write_safetensors_shards

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    folder = tmp_path / "sharded"
    folder.mkdir()
    tensors = [(n, p.detach()) for n, p in model.named_parameters()]
    names = write_safetensors_shards(folder, iter(tensors), max_bytes=100_000)
    assert len(names) > 2 and names[0] == f"model-00001-of-{len(names):05d}.safetensors"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {n for n, _ in tensors} and set(index["weight_map"].values()) == set(names)
    model.config.save_pretrained(folder)
    again = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert all(torch.equal(p, dict(again.named_parameters())[n]) for n, p in model.named_parameters())
