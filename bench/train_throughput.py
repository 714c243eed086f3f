"""Training throughput: the alignlens step (LM head at target positions only) vs a reference step
(HF forward with labels, i.e. full-sequence logits), same model, batch and LoRA config.

    .venv/bin/python bench/train_throughput.py [--model gemma-3-270m] [--batch 8] [--seq 128] [--steps 3]

The batch is real zh+de question-translation examples, cut/right-padded to exactly `--seq` tokens;
tokens/s counts all batch x seq positions (the same for both steps). Each timed step is forward,
backward, AdamW step and zero_grad; steps alternate between the two methods (after one warm-up
step each) so that load from other processes affects both alike; the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from alignlens.model import load_hf, resolve_device
from alignlens.train import TargetLossModel, TrainConfig
from alignlens.train.examples import encode, load_pairs
from alignlens.train.trainer import wrap_lora


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per method")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    cfg = TrainConfig.from_preset("default", per_language=args.batch)  # LoRA r=8, alpha=16, q_proj,v_proj
    device = resolve_device(args.device)
    model, tok, info = load_hf(args.model, device, torch.float32)
    model = wrap_lora(model, cfg)
    model.train()
    target_loss = TargetLossModel(model)  # (loss_sum, n) = target_loss(ids, target_mask)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)

    examples, _ = encode(tok, load_pairs(cfg), max_len=args.seq)
    examples = sorted(examples, key=lambda e: -len(e.ids))[: args.batch]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((args.batch, args.seq), pad, dtype=torch.long)
    tgt = torch.zeros_like(ids, dtype=torch.bool)
    real = torch.zeros_like(ids, dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        tgt[i, e.n_prompt: len(e.ids)] = True
        real[i, : len(e.ids)] = True
    ids, tgt, real = ids.to(device), tgt.to(device), real.to(device)
    labels = ids.masked_fill(~tgt, -100)

    def alignlens_step() -> float:
        loss, n = target_loss(ids, tgt)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach()) / n

    def reference_step() -> float:
        loss = model(input_ids=ids, attention_mask=real.long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def timed(fn) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, value

    n_tok = args.batch * args.seq
    print(f"model {args.model} ({info['architecture']}, vocab {model.get_output_embeddings().weight.shape[0]}), "
          f"batch {args.batch}x{args.seq}, {int(real.sum())} real tokens, {int(tgt[:, 1:].sum())} target tokens, "
          f"LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} {','.join(cfg.lora_targets)}, "
          f"{torch.get_num_threads()} threads, {device}")
    # warm-up, and a check that both compute the same loss (the optimizer steps in between differ
    # only by one identical update, so compare on a fresh pass without stepping)
    with torch.no_grad():
        a = float(target_loss(ids, tgt)[0]) / int(tgt[:, 1:].sum())
        b = float(model(input_ids=ids, attention_mask=real.long(), labels=labels).loss)
    print(f"loss check: alignlens {a:.6f}  reference {b:.6f}  |diff| {abs(a - b):.2e}")
    timed(alignlens_step), timed(reference_step)
    times: dict[str, list[float]] = {"alignlens": [], "reference": []}
    for _ in range(args.steps):
        times["reference"].append(timed(reference_step)[0])
        times["alignlens"].append(timed(alignlens_step)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in ("reference", "alignlens"):
        print(f"{k:>10}: {n_tok / med[k]:8.1f} tok/s  (median step {med[k]:.2f} s over {args.steps}: "
              + ", ".join(f"{t:.2f}" for t in times[k]) + ")")
    ratio = med["reference"] / med["alignlens"]
    print(f"ratio alignlens/reference: {ratio:.2f}x (target >= 2.5)")


if __name__ == "__main__":
    main()
