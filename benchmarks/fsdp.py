"""Step time of FSDP against DDP for coatnet_nano on 2 CPU processes (gloo), measured side by side.

    torchrun --standalone --nproc_per_node=2 benchmarks/fsdp.py [--batch 16] [--image-size 64] [--rounds 12]

Each process builds the model twice from the same seed: one copy wrapped in
DistributedDataParallel, one sharded with ``coatlib.train``'s FSDP set-up (every
block, then the root). A round times one AdamW training step of each, in
alternating order (``timed_rounds``); the ratio FSDP / DDP is the median of the
per-round ratios (``paired_speedup``). Process 0 prints the result and, with
``--out``, writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from throughput import paired_speedup, timed_rounds

import coatlib
from coatlib.train import distribute, init_distributed, versions


def training_step(net, batch: int, image_size: int):
    """A closure: one forward, backward and AdamW step of ``net`` on a fixed random batch."""
    x, y = torch.randn(batch, 3, image_size, image_size), torch.randint(0, 1000, (batch,))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="coatnet_nano")
    p.add_argument("--batch", type=int, default=16, help="per process")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--out", type=Path, default=None, help="a JSON file for the result")
    args = p.parse_args()
    rank, world, _ = init_distributed()
    if world < 2:
        raise SystemExit("run under `torchrun --standalone --nproc_per_node=2 benchmarks/fsdp.py`")
    cpu = torch.device("cpu")
    nets = {}
    for name, fsdp in (("DDP", False), ("FSDP", True)):
        torch.manual_seed(0)
        model = coatlib.create_model(args.model, image_size=args.image_size)
        nets[name] = distribute(model, cpu, world, fsdp=fsdp, activation_checkpointing=False, dtype=None)
    steps = [training_step(nets[name], args.batch, args.image_size) for name in ("DDP", "FSDP")]
    times = timed_rounds(steps, args.rounds)
    result = {
        "command": f"torchrun --standalone --nproc_per_node={world} benchmarks/fsdp.py --model {args.model} "
        f"--batch {args.batch} --image-size {args.image_size} --rounds {args.rounds}",
        "processes": world,
        "threads_per_process": torch.get_num_threads(),
        "median_step_s": {"DDP": statistics.median(times[0]), "FSDP": statistics.median(times[1])},
        "fsdp_over_ddp": paired_speedup(times, 0, 1),  # median over rounds of FSDP's time / DDP's
        "versions": versions(),
    }
    if rank == 0:
        print(
            f"{args.model}, {world} processes x batch {args.batch} at {args.image_size}x{args.image_size}, "
            f"{args.rounds} rounds: median step DDP {result['median_step_s']['DDP'] * 1000:.0f} ms, "
            f"FSDP {result['median_step_s']['FSDP'] * 1000:.0f} ms; FSDP / DDP (median of paired ratios) "
            f"{result['fsdp_over_ddp']:.2f}"
        )
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
