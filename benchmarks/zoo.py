"""The model zoo side by side with torchvision: parameters, MACs at 224 and CPU images/s.

    python benchmarks/zoo.py [--models PATTERNS] [--quick] [--batch 8] [--rounds 5] [--warmup 3]

For every zoo model: coatlib's parameter count, MACs at 224x224
(``coatlib.count_flops``) and inference throughput (eval mode, no_grad, fp32,
batch 8, 224x224, best of ``--rounds`` after ``--warmup`` runs, the models run
in turns so that all see the same machine load), as the plain model and as
``coatlib.fuse(model)`` (BatchNorm folded into the convs), next to the
same architecture from torchvision (timm for the three models torchvision
lacks: MobileNet V1, ViT-Ti/16, ViT-S/16) when it is importable. Before
timing, torchvision's random weights are loaded into the coatlib model
(``load_torchvision_weights``) and the largest logit difference is printed,
divided by the largest logit when that is above 1 (random weights without
training make some logits huge): it shows that the two are the same function.
Images/s come from each model's best round; ``plain`` and ``fused`` are
coatlib's speed-ups over the peer, medians over rounds of the paired times
(``paired_speedup``: robust to the load changing during the run); plain rows
below 0.95 and fused rows below 1.0 are flagged.
The peer GMACs of torchvision's ViTs miss the attention matmuls: their fused
``nn.MultiheadAttention`` kernel is invisible to ``FlopCounterMode``.

``--models`` takes comma-separated glob patterns (``"resnet*,swin_t"``);
``--quick`` runs only the smallest model of each family with fewer rounds.
"""

from __future__ import annotations

import argparse
import fnmatch

import torch
from peers import import_peer
from throughput import paired_speedup, timed_rounds

import coatlib

FAMILIES = ("resnet", "mobilenet", "efficientnet", "vit", "swin", "convnext")
QUICK = ["resnet18", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s",
         "vit_ti_16", "swin_t", "convnext_tiny"]  # fmt: skip
TIMM_NAMES = {
    "mobilenet_v1": "mobilenetv1_100",
    "vit_ti_16": "vit_tiny_patch16_224",
    "vit_s_16": "vit_small_patch16_224",
}


def zoo_models() -> list[str]:
    """Every registered zoo model, family by family (CoAtNet has its own benchmark)."""
    return [n for family in FAMILIES for n in coatlib.list_models(family + "*")]


def build_peer(name: str, torchvision, timm):
    """``(label, model)`` of the reference implementation, or ``(None, None)``."""
    if name in TIMM_NAMES:
        return (f"timm {TIMM_NAMES[name]}", timm.create_model(TIMM_NAMES[name])) if timm else (None, None)
    if torchvision is not None and hasattr(torchvision.models, name):
        return f"torchvision {name}", getattr(torchvision.models, name)()
    return None, None


def inference_rounds(models: list[torch.nn.Module], batch: int, rounds: int, warmup: int) -> list[list[float]]:
    """Seconds of each model's inference on one batch, every round (``timed_rounds``)."""
    x = torch.randn(batch, 3, 224, 224)

    def infer(model):
        def run():
            with torch.no_grad():
                model(x)

        return run

    return timed_rounds([infer(m.eval()) for m in models], rounds, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated glob patterns, e.g. 'resnet*,swin_t'")
    parser.add_argument("--quick", action="store_true", help="smallest model of each family, 3 rounds")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    names = QUICK if args.quick else zoo_models()
    if args.models:
        patterns = args.models.split(",")
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
        if not names:
            raise SystemExit(f"no zoo model matches {args.models!r}; choose from: {', '.join(zoo_models())}")
    rounds = 3 if args.quick else args.rounds
    torchvision, timm = import_peer("torchvision"), import_peer("timm")
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, 224x224, fp32 inference, "
          f"best of {rounds} after {args.warmup} warm-up runs")  # fmt: skip
    print(
        "| model | params | GMACs | coatlib img/s | fused img/s | peer | peer params | peer GMACs | peer img/s "
        "| plain | fused | logit diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    slow = []
    for name in names:
        model = coatlib.create_model(name).eval()
        label, peer = build_peer(name, torchvision, timm)
        row = (
            f"| {name} | {coatlib.flops.count_params(model) / 1e6:.2f}M | {coatlib.count_flops(model, 224) / 1e9:.2f} |"
        )
        if peer is None:
            times = inference_rounds([model, coatlib.fuse(model)], args.batch, rounds, args.warmup)
            print(f"{row} {args.batch / min(times[0]):.1f} | {args.batch / min(times[1]):.1f} | (none) | | | | | | |")
            continue
        peer.eval()
        diff = ""
        if label.startswith("torchvision"):
            coatlib.load_torchvision_weights(model, peer.state_dict())
            x = torch.randn(2, 3, 224, 224)
            with torch.no_grad():
                expected = peer(x)
                scale = max(1.0, expected.abs().max().item())  # torchvision's ViT starts with a zero head
                diff = f"{(model(x) - expected).abs().max().item() / scale:.1e}"
        times = inference_rounds([model, coatlib.fuse(model), peer], args.batch, rounds, args.warmup)
        ips, fused_ips, peer_ips = (args.batch / min(t) for t in times)
        plain, fused = paired_speedup(times, 0, 2), paired_speedup(times, 1, 2)
        if plain < 0.95 or fused < 1.0:
            slow.append(name)
        print(f"{row} {ips:.1f} | {fused_ips:.1f} | {label} | {coatlib.flops.count_params(peer) / 1e6:.2f}M | "
              f"{coatlib.count_flops(peer, 224) / 1e9:.2f} | {peer_ips:.1f} | {plain:.2f}{' !' if plain < 0.95 else ''} | "
              f"{fused:.2f}{' !' if fused < 1.0 else ''} | {diff} |", flush=True)  # fmt: skip
    print("\nbelow the goal (plain < 0.95x or fused < 1.0x the peer): " + (", ".join(slow) if slow else "none"))
    if torchvision is None:
        print("torchvision is not importable: no side-by-side columns for its models")


if __name__ == "__main__":
    main()
