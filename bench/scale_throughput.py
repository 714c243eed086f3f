"""Data-parallel scaling of `alignlens eval`/`analyze`: 1 process vs N processes under torchrun.

Runs the real command twice on the same items, wall time including the model load and the
process-group start (what a user waits for): once alone with T threads, once as
`torchrun --nproc_per_node=N` with T/N threads per process (the same cores), unless
--threads-per-process is given. Prints items/s of each, the ratio, and whether the outputs are
byte-identical (they are only when both runs use the same threads per process: pass
--threads-per-process to check that; the timing comparison then gives the N run more cores).
Does not gate on the ratio: on 2 CPU cores expect ~1.0-1.3x over 1 process x 2 threads.

    python bench/scale_throughput.py [--command eval|analyze] [--nproc 2] [--model gemma-3-270m]
        [--tasks emotion] [--languages en,de,zh,hi] [--limit 20] [--batch-size 8] [--threads 2]

GPU target (capture >= 0.8 N on N GPUs for a 7B model over all items):

    python bench/scale_throughput.py --command analyze --nproc 8 --model mistralai/Mistral-7B-v0.1 \\
        --all --batch-size 16 --device cuda
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUTPUTS = ("predictions.jsonl", "summary.json", "logit_lens.json", "similarity.json", "neurons.json",
           "neurons.safetensors")


def run(nproc: int, threads: int, args: argparse.Namespace, out: Path) -> float:
    """Wall seconds of one run (load included); raises when the command fails."""
    cmd = [sys.executable, "-m", "alignlens"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        "-m", "alignlens"]
    cmd += [args.command, "--model", args.model, "--tasks", args.tasks, "--languages", args.languages,
            "--batch-size", str(args.batch_size), "--device", args.device, "--out", str(out)]
    cmd += ["--all"] if args.all and args.command == "eval" else ["--limit", str(args.limit)]
    if args.command == "analyze":
        cmd += ["--no-report", "--similarity-resamples", "0"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), ALIGNLENS_PROGRESS="off")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall


def n_items(out: Path) -> int:
    pred = out / "predictions.jsonl" if (out / "predictions.jsonl").is_file() else out / "base" / "predictions.jsonl"
    return len(pred.read_text(encoding="utf-8").splitlines())


def identical(a: Path, b: Path) -> bool:
    sub = "base" if (a / "base").is_dir() else ""
    files = [f for f in OUTPUTS if (a / sub / f).is_file()]
    return all((a / sub / f).read_bytes() == (b / sub / f).read_bytes() for f in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--command", choices=("eval", "analyze"), default="eval")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tasks", default="emotion")
    ap.add_argument("--languages", default="en,de,zh,hi")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--all", action="store_true", help="every item (eval --all; analyze: a large --limit)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the 1-process run")
    ap.add_argument("--threads-per-process", type=int, default=None,
                    help="threads of each of the N processes (default threads / nproc, at least 1)")
    args = ap.parse_args()
    if args.all and args.command == "analyze":
        args.limit = 100_000
    per_proc = args.threads_per_process or max(1, args.threads // args.nproc)
    work = Path(tempfile.mkdtemp(prefix="alignlens-scale-"))
    try:
        one = run(1, args.threads, args, work / "one")
        many = run(args.nproc, per_proc, args, work / "many")
        n = n_items(work / "one")
        print(f"{args.command} {args.model}: {n} items ({args.tasks}; {args.languages}), batch {args.batch_size}, "
              f"{args.device}")
        print(f"  1 process  x {args.threads} threads: {one:7.1f} s wall (load included), {n / one:6.2f} items/s")
        print(f"  {args.nproc} processes x {per_proc} threads: {many:7.1f} s wall (load included), {n / many:6.2f} items/s")
        print(f"  ratio (N processes / 1 process, items/s): {one / many:.2f}x")
        same = identical(work / "one", work / "many")
        note = "" if args.threads == per_proc else " (thread counts differ, so small differences are expected)"
        print(f"  outputs byte-identical: {same}{note}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
