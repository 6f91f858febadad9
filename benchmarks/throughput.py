"""Throughput of CoAtNet-0 at 224: coatlib against timm, measured side by side in one run.

    python benchmarks/throughput.py [--batch 8] [--iters 5] [--device cpu|cuda] [--amp]

Prints images/s for inference and for a training step (forward, backward,
SGD step), the ratio coatlib / timm at equal architecture (timm's
``coatnet_0_224`` uses the stride-2 depthwise down-sampling and average
pooling, so coatlib is built with ``downsample="dw", pool="avg"``) and with
coatlib's defaults, and the achieved GFLOP/s against a large matmul measured
in the same run. ``--no-fold`` turns off coatlib's eval-mode BatchNorm folding
(the ablation: conv and BatchNorm run one after the other, as in timm).
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

import coatlib
from coatlib.layers import fold_batchnorms
from peers import import_peer


def best_seconds(fns: list, rounds: int, warmup: int = 2) -> list[float]:
    """Best time of each function over ``rounds``, run in turns so that every
    function sees the same machine load (the fairest comparison on a busy machine)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


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
    parser.add_argument("--no-fold", action="store_true", help="run BatchNorm apart from the convs")
    args = parser.parse_args()
    torch.manual_seed(0)

    rows = [
        ("coatlib coatnet_0, timm's architecture (dw, avg)", lambda: coatlib.create_model("coatnet_0", downsample="dw", pool="avg")),
        ("coatlib coatnet_0, defaults (Eq. 5 strided 1x1, max)", lambda: coatlib.create_model("coatnet_0")),
    ]
    timm = import_peer("timm")
    if timm is not None:
        rows.insert(0, ("timm coatnet_0_224", lambda: timm.create_model("coatnet_0_224")))

    peak = matmul_gflops(args.device)
    print(f"device: {args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, batch {args.batch}, 224x224, {'bf16 autocast' if args.amp else 'fp32'}, "
          f"coatlib's BatchNorm {'not ' if args.no_fold else ''}folded")
    print(f"2048x2048 matmul: {peak:.0f} GFLOP/s\n")
    print(f"| model | params | GMACs | infer img/s | train img/s | infer GFLOP/s (% of matmul) |")
    print("|---|---|---|---|---|---|")
    models = [(name, build()) for name, build in rows]
    for name, model in models:
        if name.startswith("coatlib"):
            fold_batchnorms(model, not args.no_fold)
    closures = [steps(model, args) for _, model in models]
    infer = best_seconds([c[0] for c in closures], args.iters)
    train = best_seconds([c[1] for c in closures], max(2, args.iters // 2), warmup=1)
    results = {}
    for (name, model), t_inf, t_tr in zip(models, infer, train):
        params = sum(p.numel() for p in model.parameters()) / 1e6
        macs = coatlib.count_flops(model, 224) / 1e9
        inf, tr = args.batch / t_inf, args.batch / t_tr
        results[name] = (inf, tr)
        gflops = 2 * macs * inf
        print(f"| {name} | {params:.2f}M | {macs:.2f} | {inf:.2f} | {tr:.2f} | {gflops:.0f} ({100 * gflops / peak:.0f}%) |")
    if timm is not None:
        t_inf, t_tr = results["timm coatnet_0_224"]
        print()
        for name, (inf, tr) in results.items():
            if not name.startswith("timm"):
                print(f"{name}: inference {inf / t_inf:.2f}x timm, training step {tr / t_tr:.2f}x timm")
    else:
        print("\ntimm is not importable: no side-by-side ratio")


if __name__ == "__main__":
    main()
