"""Training throughput: the alignlens step vs the HF-style step LLaMA-Factory runs, on the same
training examples, same model and LoRA config.

    .venv/bin/python bench/train_throughput.py [--model gemma-3-270m] [--batch 8] [--steps 8] [--rounds 3]

Examples: the default preset's zh+de question translation (max_len 128). Reference: the first
`--steps` steps of HF Trainer's seeded random plan over the whole epoch (so their padding is a
sample of the epoch's), batches of `--batch` padded to the longest rounded up to a multiple of 8
(LLaMA-Factory's collator), `model(input_ids, attention_mask, labels=...)` on the peft model:
logits and cross-entropy at every position. alignlens: the SAME examples as its trainer plans
them (`examples.epoch_order` on them, bucketed by length unless `--batching random`), each step
one micro-batch of `--batch` examples right-padded to its longest (`collate`), LM head at target
positions only (`TargetLossModel`).

A round runs all steps of one method (forward, backward, AdamW step, zero_grad per step); rounds
alternate between the methods (after one warm-up step each), so load from other processes
affects both alike. Reported: per-round times, the median of the per-pair ratios reference /
alignlens, the padding share of both (the benchmark's steps and the whole epoch plan), and FLOPs
per example as `bench/flops.py` counts them (token slots through the body, positions through the
LM head, training = 3x forward) with the achieved GFLOP/s against a GEMM peak measured in this run,
and the FLOP ratio of the steps and of the whole epoch's plans (with the measured ratio scaled to it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import body_flops_per_token, describe, gemm_peak_gflops, head_flops_per_position  # noqa: E402

from alignlens.model import load_hf, resolve_device  # noqa: E402
from alignlens.train import TargetLossModel, TrainConfig  # noqa: E402
from alignlens.train.config import BATCHINGS  # noqa: E402
from alignlens.train.examples import collate, encode, epoch_order, load_pairs, micro_batches, padding_share  # noqa: E402
from alignlens.train.run import wrap_lora  # noqa: E402


def _pad8(n: int) -> int:
    return -(-n // 8) * 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--batch", type=int, default=8, help="examples per step (the default preset's batch_size)")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per round and method")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per method (alternating)")
    ap.add_argument("--batching", default="bucketed", choices=BATCHINGS,
                    help="the alignlens plan (random: the order before bucketing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    cfg = TrainConfig.from_preset("default")  # zh+de, 600 per language, max_len 128; LoRA r=8, alpha=16, q_proj,v_proj
    device = resolve_device(args.device)
    model, tok, info = load_hf(args.model, device, torch.float32)
    hf = model
    model = wrap_lora(model, cfg)
    model.train()
    target_loss = TargetLossModel(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    examples, _ = encode(tok, load_pairs(cfg), max_len=cfg.max_len)
    lengths = [len(e.ids) for e in examples]
    bucketed = args.batching == "bucketed"
    # The reference's first steps are what HF Trainer runs first: its seeded random plan, so their
    # padding is a sample of the whole epoch's. alignlens runs the same examples as its trainer
    # would plan them (bucketed by length: `epoch_order` on these examples, one window).
    ref_plan = micro_batches(epoch_order(len(examples), args.seed, 0), args.batch, args.batch)
    ref_batches = ref_plan[: args.steps]
    chosen = [i for b in ref_batches for i in b]
    sub = epoch_order(len(chosen), args.seed, 0, [lengths[i] for i in chosen] if bucketed else None, args.batch)
    mine = [[chosen[j] for j in b] for b in micro_batches(sub, args.batch, args.batch)]

    ali_inputs = []
    for b in mine:
        ids, tgt = collate([examples[i] for i in b], pad)
        ali_inputs.append((ids.to(device), tgt.to(device), int(tgt[:, 1:].sum())))
    ref_inputs = []
    for b in ref_batches:
        width = _pad8(max(lengths[i] for i in b))
        ids = torch.full((len(b), width), pad, dtype=torch.long)
        tgt = torch.zeros_like(ids, dtype=torch.bool)
        real = torch.zeros_like(ids, dtype=torch.bool)
        for r, i in enumerate(b):
            e = examples[i]
            ids[r, : len(e.ids)] = torch.tensor(e.ids)
            tgt[r, e.n_prompt: len(e.ids)] = True
            real[r, : len(e.ids)] = True
        ref_inputs.append((ids.to(device), real.long().to(device), ids.masked_fill(~tgt, -100).to(device),
                           int(tgt[:, 1:].sum())))

    def alignlens_round() -> None:
        for ids, tgt, n in ali_inputs:
            loss, _ = target_loss(ids, tgt)
            (loss / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def reference_round() -> None:
        for ids, mask, labels, _ in ref_inputs:
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    n_ex = len(chosen)
    real_tok = sum(lengths[i] for i in chosen)
    ali_slots = sum(int(ids.numel()) for ids, _, _ in ali_inputs)
    ref_slots = sum(int(ids.numel()) for ids, _, _, _ in ref_inputs)
    n_target = sum(n for _, _, n in ali_inputs)
    print(f"model {args.model} ({info['architecture']}, vocab {hf.get_output_embeddings().weight.shape[0]}), "
          f"LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} {','.join(cfg.lora_targets)}, {torch.get_num_threads()} threads, "
          f"{device}; {args.steps} steps x {args.batch} examples = {n_ex} examples, {real_tok} real tokens, "
          f"{n_target} target tokens")
    body, head = body_flops_per_token(hf), head_flops_per_position(hf)
    targets = [len(e.ids) - max(e.n_prompt, 1) for e in examples]  # target tokens each example predicts

    def alignlens_flops(batches: list[list[int]]) -> float:
        """Body over each row padded to its batch's longest but its last position; head at the
        target-predicting positions; training = 3x forward."""
        return 3 * (body * sum(len(b) * (max(lengths[i] for i in b) - 1) for b in batches)
                    + head * sum(targets[i] for b in batches for i in b))

    def reference_slots(batches: list[list[int]]) -> int:
        return sum(_pad8(max(lengths[i] for i in b)) * len(b) for b in batches)

    def reference_flops(batches: list[list[int]]) -> float:
        """Body and head at every token slot (padded to a multiple of 8); training = 3x forward."""
        return 3 * (body + head) * reference_slots(batches)

    ali_plan = micro_batches(epoch_order(len(examples), args.seed, 0, lengths if bucketed else None, args.batch),
                             args.batch, args.batch)
    for name, batches, slots in (("alignlens " + args.batching, ali_plan, padding_share(lengths, ali_plan)[1]),
                                 ("reference random", ref_plan, reference_slots(ref_plan))):
        real = padding_share(lengths, batches)[0]
        print(f"padding over the whole epoch plan ({len(batches)} steps), {name:>20}: {100 * (1 - real / slots):5.1f}% "
              f"of {slots} token slots")
    print(f"padding in the benchmark's steps: alignlens {100 * (1 - real_tok / ali_slots):.1f}% of {ali_slots} slots, "
          f"reference {100 * (1 - real_tok / ref_slots):.1f}% of {ref_slots} slots")

    # the same loss on the same examples (no optimizer step in between): mean over all target tokens
    with torch.no_grad():
        a = sum(float(target_loss(ids, tgt)[0]) for ids, tgt, _ in ali_inputs) / n_target
        b = sum(float(model(input_ids=ids, attention_mask=m, labels=lab).loss) * n
                for ids, m, lab, n in ref_inputs) / n_target
    print(f"loss check (mean over the {n_target} target tokens): alignlens {a:.6f}  reference {b:.6f}  "
          f"|diff| {abs(a - b):.2e}")

    # warm-up: one step each
    saved_a, saved_r = ali_inputs[:], ref_inputs[:]
    ali_inputs[:], ref_inputs[:] = saved_a[:1], saved_r[:1]
    timed(alignlens_round), timed(reference_round)
    ali_inputs[:], ref_inputs[:] = saved_a, saved_r
    times: dict[str, list[float]] = {"reference": [], "alignlens": []}
    for _ in range(args.rounds):
        times["reference"].append(timed(reference_round))
        times["alignlens"].append(timed(alignlens_round))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in ("reference", "alignlens"):
        print(f"{k:>10}: {real_tok / med[k]:7.1f} real tok/s, {n_ex / med[k]:5.2f} examples/s  (median round "
              f"{med[k]:.2f} s over {args.rounds}: " + ", ".join(f"{t:.2f}" for t in times[k]) + ")")
    ratios = [r / a for r, a in zip(times["reference"], times["alignlens"])]
    ratio = statistics.median(ratios)
    print(f"ratio reference/alignlens: {ratio:.2f}x median of the {args.rounds} round pairs "
          f"({', '.join(f'{r:.2f}' for r in ratios)}); target >= 2.1, moonshot 2.5")

    ali_flops, ref_flops = alignlens_flops(mine), reference_flops(ref_batches)
    peak = gemm_peak_gflops()
    print(describe("alignlens", ali_flops, med["alignlens"], peak, n_ex))
    print(describe("reference", ref_flops, med["reference"], peak, n_ex))
    sample, whole = ref_flops / ali_flops, reference_flops(ref_plan) / alignlens_flops(ali_plan)
    print(f"FLOP ratio reference/alignlens: {sample:.2f}x on the benchmark's steps, {whole:.2f}x over the whole "
          f"epoch; the measured ratio scaled to the epoch's FLOPs (a projection: time ~ FLOPs at a fixed "
          f"efficiency): {ratio * whole / sample:.2f}x")


if __name__ == "__main__":
    main()
