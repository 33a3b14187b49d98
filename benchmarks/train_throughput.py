"""Training throughput of GiMeFive (images/s): fp32 vs bf16 autocast + channels_last.

All modes run side by side in one process, interleaved round by round (one step of
each mode per round), so background load hits them alike; warm-up steps are excluded
and the median step time is reported. Real SGD steps (forward, loss, backward, update)
on random 64x64 input, batch 64 by default.

    python benchmarks/train_throughput.py [--steps 5 --warmup 2 --batch-size 64 -o FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from gimefive.pipeline.bench.machine import cpu_name
from gimefive.train.loop import bf16_is_fast

from gimefive.model import GiMeFive

MODES = {  # name -> (autocast bf16, channels_last)
    "fp32": (False, False),
    "fp32+channels_last": (False, True),
    "bf16+channels_last": (True, True),
}


def make_step(bf16: bool, channels_last: bool, batch: int, device: torch.device):
    torch.manual_seed(0)
    model = GiMeFive().to(device).train()
    x = torch.randn(batch, 3, 64, 64, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("-o", "--out", type=Path,
                        default=Path("benchmarks/results/train_throughput.json"))
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {sorted(MODES)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = {m: make_step(*MODES[m], args.batch_size, device) for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.warmup + args.steps):
        this_round = {m: steps[m]() for m in modes}
        if r >= args.warmup:
            for m, t in this_round.items():
                times[m].append(t)
        kind = "warm-up" if r < args.warmup else "timed"
        print(f"round {r + 1}/{args.warmup + args.steps} ({kind}): " +
              ", ".join(f"{m} {t:.2f}s" for m, t in this_round.items()), flush=True)

    rows = []
    for m in modes:
        med, best = statistics.median(times[m]), min(times[m])
        rows.append({"mode": m, "median_step_s": med, "min_step_s": best,
                     "images_per_s_median": args.batch_size / med,
                     "images_per_s_best": args.batch_size / best, "step_times_s": times[m]})
    base = rows[0]["images_per_s_median"]
    machine = {"cpu": cpu_name(), "cores": torch.get_num_threads(),
               "device": str(device), "torch": torch.__version__,
               "native_bf16": bf16_is_fast(device)}
    print(f"\nGiMeFive training throughput, batch {args.batch_size}, {args.steps} timed steps "
          f"after {args.warmup} warm-up, {machine['cpu']}, {machine['cores']} threads, "
          f"torch {machine['torch']}, native bf16: {machine['native_bf16']}")
    print(f"| mode | median s/step | images/s (median) | images/s (best) | vs {modes[0]} |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['mode']} | {row['median_step_s']:.2f} | {row['images_per_s_median']:.1f} | "
              f"{row['images_per_s_best']:.1f} | {row['images_per_s_median'] / base:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"batch_size": args.batch_size, "steps": args.steps,
                                    "warmup": args.warmup, "machine": machine,
                                    "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
