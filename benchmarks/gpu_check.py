"""Every registered model on one device: does it run, and does it compute the same thing in every mode?

    python benchmarks/gpu_check.py --json gpu_check.json                   # on a GPU: every model, 224 px, batch 8
    python benchmarks/gpu_check.py --models 'coatnet_*,resnet50' --no-compile
    python benchmarks/gpu_check.py --device cpu --image-size 64 --batch 2 --models coatnet_pico --rounds 1

For every registered model (``coatlib.list_models``, or the ``--models`` patterns) one forward and
backward pass of a random batch, in eval mode (no dropout, BatchNorm on its running statistics):

* ``fp32``: float32, the reference (TF32 off on CUDA, so that it is a true float32 reference);
* ``bf16``: under ``torch.autocast(dtype=torch.bfloat16)``;
* ``compiled`` and ``compiled bf16``: the same through ``torch.compile`` (on by default on CUDA only;
  compiling on a CPU takes minutes).

Each is compared with the reference: the largest difference of the logits, and of the parameters'
gradients, divided by the largest absolute value of the reference. A row passes when everything is
finite and both differences are within ``TOLERANCE``. Then CoAtNet's two attention variants (pre- and
post-softmax bias, ``--attention-model``) go through the same checks, ``coatlib.train.fit`` trains a
small CoAtNet for a few steps on the device in float32 and in bfloat16, and CoAtNet-0 (timm's
architecture: ``downsample="dw", pool="avg"``) is timed against timm's ``coatnet_0_224`` with the
helpers of ``benchmarks/throughput.py``: the models take turns, images/s is each model's best round and
the ratio the median of the per-round ratios.

Prints one table (Markdown) and, with ``--json PATH``, writes every row there, after each model, so
that a run cut short keeps what it measured. Exits with 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peers import import_peer
from throughput import paired_speedup, steps, timed_rounds

import coatlib
import coatlib.data
from coatlib.train import fit

# Largest allowed difference against float32, relative to the largest |value| of the reference. bfloat16
# keeps 8 significant bits (a relative rounding error up to 0.4% per operation, which grows with depth);
# the compiled float32 model only reorders and fuses the same float32 operations.
TOLERANCE = {"bf16": 0.1, "compiled": 1e-3, "compiled bf16": 0.1}


def relative_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).abs().max() / reference.abs().max().clamp(min=1e-12)).item()


def forward_backward(model, x, y, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the concatenated parameter gradients of one forward and backward pass."""
    for p in model.parameters():
        p.grad = None
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return logits.detach().float(), torch.cat(grads).float()


def row(check: str, variant: str, passed: bool, note: str = "", **measured) -> dict:
    return {"check": check, "variant": variant, "passed": passed, "note": note, **measured}


def check_model(name: str, args, label: str | None = None, **overrides) -> list[dict]:
    """The fp32 reference, then bf16 and (with ``args.compile``) the compiled model, against it."""
    label = label or name
    torch.manual_seed(0)
    try:
        model = coatlib.create_model(name, image_size=args.image_size, **overrides).to(args.device).eval()
        x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device)
        y = torch.randint(0, 1000, (args.batch,), device=args.device)  # every model has 1,000 classes or more
        reference = forward_backward(model, x, y, bf16=False)
    except Exception as e:  # a model that cannot even run in float32: one failed row, then the next model
        return [row(label, "fp32", False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")]
    finite = all(t.isfinite().all().item() for t in reference)
    rows = [row(label, "fp32", finite, "" if finite else "non-finite logits or gradients")]
    variants = {"bf16": (model, True)}
    if args.compile:
        compiled = torch.compile(model)
        variants |= {"compiled": (compiled, False), "compiled bf16": (compiled, True)}
    for variant, (net, bf16) in variants.items():
        try:
            logits, grads = forward_backward(net, x, y, bf16)
        except Exception as e:
            rows.append(row(label, variant, False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            continue
        diffs = {"logits_diff": relative_difference(logits, reference[0])}
        diffs["grads_diff"] = relative_difference(grads, reference[1])
        ok = all(math.isfinite(d) and d <= TOLERANCE[variant] for d in diffs.values())
        note = "" if ok else f"a difference above {TOLERANCE[variant]:g} or not finite"
        rows.append(row(label, variant, ok, note, **diffs))
    del model, variants
    torch._dynamo.reset()  # compiled code of one model must not count against the next one's recompiles
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return rows


def check_fit(args) -> list[dict]:
    """``fit`` for a few steps on the device, in float32 and in bfloat16: finite losses, a test accuracy."""
    train, test = coatlib.data.load_splits("same_different", None, 3, 4 * args.fit_batch, 2 * args.fit_batch)
    rows = []
    for amp in (None, "bf16"):
        torch.manual_seed(0)
        model = coatlib.create_model("coatnet_pico", num_classes=2, image_size=train[0][0].shape[-1])
        try:
            history = fit(
                model, train, test, epochs=1, batch_size=args.fit_batch, amp=amp, device=args.device, progress=False
            )
        except Exception as e:
            rows.append(row("fit coatnet_pico", amp or "fp32", False, f"{type(e).__name__}: {str(e)[:200]}"))
            continue
        loss, accuracy = history["train_loss"][-1], history["test_acc"][-1]
        note = f"4 steps of {args.fit_batch}: train loss {loss:.3f}, test acc {accuracy:.2f}"
        rows.append(row("fit coatnet_pico", amp or "fp32", math.isfinite(loss), note))
    return rows


def check_speed(args) -> list[dict]:
    """Images/s of coatlib's CoAtNet-0 and timm's coatnet_0_224 (equal architecture), paired ratio."""
    timm = import_peer("timm")
    if timm is None:
        return [row("speed coatnet_0", "-", False, "timm is not importable: pip install 'coatlib[peers]'")]
    torch.manual_seed(0)
    models = {
        "timm": timm.create_model("coatnet_0_224"),
        "coatlib": coatlib.create_model("coatnet_0", downsample="dw", pool="avg"),
    }
    rows = []
    for precision in ("fp32", "bf16") if args.device == "cuda" else ("fp32",):
        settings = argparse.Namespace(batch=args.batch, device=args.device, amp=precision == "bf16")
        closures = [steps(model, settings) for model in models.values()]
        measured = {}
        for kind, index in (("infer", 0), ("train", 1)):
            times = timed_rounds([c[index] for c in closures], args.rounds)
            measured |= {f"{kind}_images_per_s_{lib}": args.batch / min(t) for lib, t in zip(models, times)}
            measured[f"{kind}_coatlib_over_timm"] = paired_speedup(times, 1, 0)
        note = (
            f"images/s coatlib {measured['infer_images_per_s_coatlib']:.1f} / timm "
            f"{measured['infer_images_per_s_timm']:.1f} inference ({measured['infer_coatlib_over_timm']:.2f}x), "
            f"{measured['train_images_per_s_coatlib']:.1f} / {measured['train_images_per_s_timm']:.1f} training "
            f"({measured['train_coatlib_over_timm']:.2f}x)"
        )
        rows.append(row("speed coatnet_0 vs timm", precision, True, note, **measured))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", help="comma-separated glob patterns of registered models (default: every one)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="also torch.compile (default: on CUDA)"
    )
    parser.add_argument("--attention-model", default="coatnet_0", help="the CoAtNet whose pre/post-softmax is checked")
    parser.add_argument("--fit-batch", type=int, default=32, help="batch size of the few fit steps")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds of the speed comparison")
    parser.add_argument("--json", type=Path, help="write every row to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU here (a CPU-only torch?): use --device cpu")
    args.compile = args.device == "cuda" if args.compile is None else args.compile
    patterns = args.models.split(",") if args.models else ["*"]
    args.names = sorted({name for p in patterns for name in coatlib.list_models(p.strip())})
    if not args.names:
        parser.error(f"--models {args.models!r} matches no registered model (see coatlib.list_models())")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    return args


def machine(args) -> dict:
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    return {"device": args.device, "name": device, "torch": torch.__version__, "threads": torch.get_num_threads()}


def print_table(rows: list[dict]) -> None:
    print("| check | variant | result | logits diff | grads diff | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        diffs = [f"{r[k]:.1e}" if k in r else "" for k in ("logits_diff", "grads_diff")]
        print(
            f"| {r['check']} | {r['variant']} | {'pass' if r['passed'] else 'FAIL'} | {' | '.join(diffs)} | {r['note']} |"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    rows: list[dict] = []
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    given = sys.argv[1:] if argv is None else argv
    record = {"command": " ".join(["python", "benchmarks/gpu_check.py", *given]), "settings": settings}

    def save():
        if args.json is not None:
            summary = {"passed": sum(r["passed"] for r in rows), "failed": sum(not r["passed"] for r in rows)}
            done = {"seconds": round(time.perf_counter() - start, 1), **summary}
            args.json.write_text(json.dumps({**record, "machine": machine(args), **done, "rows": rows}, indent=1))

    jobs = [(name, {}) for name in args.names]
    jobs += [(args.attention_model, {"softmax": s}) for s in ("pre", "post")]
    for name, overrides in jobs:
        label = name + "".join(f" {k}={v}" for k, v in overrides.items())
        print(f"checking {label} ...", file=sys.stderr, flush=True)
        rows += check_model(name, args, label, **overrides)
        save()
    for check in (check_fit, check_speed):
        print(f"{check.__name__} ...", file=sys.stderr, flush=True)
        rows += check(args)
        save()
    m = machine(args)
    print(f"{m['name']} ({m['device']}), torch {m['torch']}, {args.image_size}x{args.image_size}, batch {args.batch}")
    print_table(rows)
    failed = [f"{r['check']} {r['variant']}" for r in rows if not r["passed"]]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed" + (": " + ", ".join(failed) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
