"""Throughput of CoAtNet-0 at 224: coatlib against timm, measured side by side in one run.

    python benchmarks/throughput.py [--batch 8] [--iters 5] [--device cpu|cuda] [--amp]

Prints images/s for inference and for a training step (forward, backward,
SGD step), the ratio coatlib / timm at equal architecture (timm's
``coatnet_0_224`` uses the stride-2 depthwise down-sampling and average
pooling, so coatlib is built with ``downsample="dw", pool="avg"``) and with
coatlib's defaults, each as the plain model (conv and BatchNorm one after the
other, as in timm) and as ``coatlib.fuse(model)`` (BatchNorm folded, bias
tables expanded once; inference only), and the achieved GFLOP/s against a
large matmul measured in the same run.
Images/s are from each model's best round; the speed-ups are medians of the
per-round ratios (``paired_speedup``), which hold up when the load changes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from peers import import_peer

import coatlib


def timed_rounds(fns: list, rounds: int, warmup: int = 2) -> list[list[float]]:
    """Seconds of every call: ``times[i][r]`` is function ``i`` in round ``r``. The functions run
    in turns, so the calls of one round see about the same machine load, and in reverse order
    every other round, so that none always runs right after another."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        order = list(enumerate(fns))
        for i, fn in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return times


def best_seconds(fns: list, rounds: int, warmup: int = 2) -> list[float]:
    """Best time of each function over ``rounds``, run in turns (``timed_rounds``)."""
    return [min(t) for t in timed_rounds(fns, rounds, warmup)]


def paired_speedup(times: list[list[float]], i: int, j: int) -> float:
    """How many times faster function ``i`` is than ``j``: the median over rounds of ``j``'s time
    over ``i``'s in the same round. Robust to the load changing during a run, which a ratio of
    two best times is not: each best may come from a different, quieter moment."""
    return statistics.median(tj / ti for ti, tj in zip(times[i], times[j]))


def matmul_gflops(device: str, n: int = 2048, iters: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    (seconds,) = best_seconds([lambda: _sync(a @ b, device)], iters)
    return 2 * n**3 / seconds / 1e9


def _sync(x, device):
    if device == "cuda":
        torch.cuda.synchronize()
    return x


def steps(model: torch.nn.Module, args):
    """The inference and training-step closures for one model."""
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)
    y = torch.randint(0, 1000, (args.batch,), device=args.device)
    model = model.to(args.device)
    amp = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.amp)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def infer():
        model.eval()
        with torch.no_grad(), amp:
            _sync(model(x), args.device)

    def train_step():
        model.train()
        with amp:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(loss, args.device)

    return infer, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    args = parser.parse_args()
    torch.manual_seed(0)

    equal = coatlib.create_model("coatnet_0", downsample="dw", pool="avg")
    default = coatlib.create_model("coatnet_0")
    models = [  # (name, model, trains)
        ("coatlib coatnet_0, timm's architecture (dw, avg)", equal, True),
        ("coatlib.fuse(coatnet_0), timm's architecture (dw, avg)", coatlib.fuse(equal), False),
        ("coatlib coatnet_0, defaults (Eq. 5 strided 1x1, max)", default, True),
        ("coatlib.fuse(coatnet_0), defaults", coatlib.fuse(default), False),
    ]
    timm = import_peer("timm")
    if timm is not None:
        models.insert(0, ("timm coatnet_0_224", timm.create_model("coatnet_0_224"), True))

    peak = matmul_gflops(args.device)
    print(
        f"device: {args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, batch {args.batch}, 224x224, {'bf16 autocast' if args.amp else 'fp32'}"
    )
    print(f"2048x2048 matmul: {peak:.0f} GFLOP/s\n")
    print("| model | params | GMACs | infer img/s | train img/s | infer GFLOP/s (% of matmul) |")
    print("|---|---|---|---|---|---|")
    closures = [steps(model, args) for _, model, _ in models]
    trainers = [i for i, (_, _, trains) in enumerate(models) if trains]
    infer = timed_rounds([c[0] for c in closures], args.iters)
    train = dict(zip(trainers, timed_rounds([closures[i][1] for i in trainers], max(2, args.iters // 2), warmup=1)))
    for i, (name, model, _) in enumerate(models):
        params = sum(p.numel() for p in model.parameters()) / 1e6
        macs = coatlib.count_flops(model, 224) / 1e9
        inf = args.batch / min(infer[i])
        tr = f"{args.batch / min(train[i]):.2f}" if i in train else "(inference only)"
        gflops = 2 * macs * inf
        print(f"| {name} | {params:.2f}M | {macs:.2f} | {inf:.2f} | {tr} | {gflops:.0f} ({100 * gflops / peak:.0f}%) |")
    if timm is not None:
        print("\nspeed-up over timm (median over rounds of the paired times):")
        train_times = [train[i] for i in trainers]
        for i, (name, _, trains) in enumerate(models[1:], start=1):
            line = f"{name}: inference {paired_speedup(infer, i, 0):.2f}x timm"
            if trains:
                line += f", training step {paired_speedup(train_times, trainers.index(i), 0):.2f}x timm"
            print(line)
    else:
        print("\ntimm is not importable: no side-by-side ratio")


if __name__ == "__main__":
    main()
