"""Command-line options shared by the benchmarks that compare alignlens with the paper's method on
the same items (`eval_throughput.py`, `analyze_vs_paper.py`)."""

from __future__ import annotations

import argparse

import torch


def comparison_parser(description: str, *, task: str, items: int, task_help: str | None = None) -> argparse.ArgumentParser:
    """--model --task --items --languages --batch-size --rounds --threads, with these defaults."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--task", default=task, help=task_help)
    ap.add_argument("--items", type=int, default=items, help="items per language")
    ap.add_argument("--languages", default="en,zh,de")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (the median ratio is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return ap


def parse_and_set_threads(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed options; torch's thread count set from --threads when given."""
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
