"""Block diagrams of CoAtNet, drawn from the stage plan so that they stay true.

Every diagram is computed from :func:`coatlib.models.coatnet.stage_plan`, the
function every CoAtNet is built from: of a configuration (a
:class:`~coatlib.models.coatnet.CoAtNetConfig`, an rw model's ``RwConfig``, or
a name in ``CONFIGS``), a layout and an image size, or of a built model
(``model.plan``). The numbers written in the boxes are the plan's. Each function returns a matplotlib ``Figure``; every box
is a text artist with a ``gid`` naming its part (``"stage-S3"``,
``"main-2"``, ``"shortcut-1"``, ``"bias"``, ...), which is what the tests read.

>>> from coatlib.viz.diagrams import network_diagram
>>> fig = network_diagram("coatnet_0", image_size=224)   # S0..S4 with L, D, heads and map sizes

The diagrams:

* :func:`network_diagram`: the whole network, stem S0 to S4 and the head;
* :func:`mbconv_diagram`: the MBConv block, with or without down-sampling (the
  paper's Eq. 5);
* :func:`transformer_diagram`: the Transformer block, with or without
  down-sampling (Eq. 4);
* :func:`relative_attention_diagram`: relative attention, where the bias enters
  before (pre) or after (post) the softmax (Eq. 3).

Swin's windows are drawn in :mod:`coatlib.viz.swin`.
"""

from __future__ import annotations

import numpy as np

from coatlib.viz.style import COLUMN_WIDTH, DPI

__all__ = [
    "network_diagram",
    "mbconv_diagram",
    "transformer_diagram",
    "relative_attention_diagram",
    "diagram_texts",
]

# Colours encode the kind of computation (with a legend), nothing else.
COLOURS = {
    "input": "#eeeeee",
    "conv": "#c6dbef",  # convolutions and the stem
    "norm": "#f2f2f2",  # normalisation, pooling, activations
    "attention": "#fdd0a2",  # attention and its products
    "position": "#c7e9c0",  # the relative bias: where position enters
    "mlp": "#dadaeb",  # linear layers of the FFN and the head
    "sum": "#ffffff",
}
# The one colour table of the block kinds (coatlib.models.coatnet.BLOCK_NAMES), by the computation they
# do: network_diagram's boxes and coatlib.viz.draw_stages' bars.
KIND_COLOUR = {"stem": "conv", "C": "conv", "T": "attention", "head": "mlp"}


def _config(config):
    if isinstance(config, str):
        from coatlib.models.coatnet import CONFIGS
        from coatlib.models.coatnet_rw import RW_CONFIGS

        known = {**CONFIGS, **RW_CONFIGS}
        if config not in known:
            raise ValueError(f"unknown CoAtNet configuration {config!r}; known: {', '.join(known)}")
        return known[config]
    return config


def diagram_texts(fig) -> dict[str, str]:
    """``{gid: text}`` of every labelled box of a diagram (what the tests compare with the config)."""
    return {t.get_gid(): t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text") and a.get_gid())}


# ---------------------------------------------------------------------------- drawing helpers


def _new(figsize, xlim, ylim):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=DPI, layout="constrained")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    return fig, ax


def _box(ax, x, y, text, kind, gid, fontsize=9):
    """A rounded box centred at (x, y) holding ``text``: the text artist (its patch clips the arrows)."""
    return ax.text(
        x,
        y,
        text,
        ha="center",
        va="center",
        fontsize=fontsize,
        gid=gid,
        zorder=3,
        bbox=dict(boxstyle="round,pad=0.4", facecolor=COLOURS[kind], edgecolor="#444444", linewidth=1),
    )


def _sum(ax, x, y, gid):
    return ax.text(
        x,
        y,
        "+",
        ha="center",
        va="center",
        fontsize=13,
        gid=gid,
        zorder=3,
        bbox=dict(boxstyle="circle,pad=0.25", facecolor="white", edgecolor="#444444"),
    )


def _arrow(ax, a, b, colour="#333333", connectionstyle="arc3"):
    """An arrow from box ``a`` to box ``b`` (text artists from :func:`_box`), from edge to edge."""
    ax.annotate(
        "",
        xy=b.get_position(),
        xytext=a.get_position(),
        zorder=4,
        arrowprops=dict(
            arrowstyle="-|>",
            color=colour,
            lw=1.2,
            shrinkA=2,
            shrinkB=2,
            patchA=a.get_bbox_patch(),
            patchB=b.get_bbox_patch(),
            connectionstyle=connectionstyle,
        ),
    )


def _legend(ax, kinds, loc="lower right"):
    from matplotlib.patches import Patch

    names = {
        "conv": "convolution",
        "norm": "norm / pooling",
        "attention": "attention (content)",
        "position": "relative bias (position)",
        "mlp": "linear / MLP",
        "input": "tensor",
    }
    ax.legend(
        handles=[Patch(facecolor=COLOURS[k], edgecolor="#444444", label=names[k]) for k in kinds],
        loc=loc,
        fontsize=8,
        frameon=False,
    )


# ---------------------------------------------------------------------------- the network


def network_diagram(config, image_size: int | tuple[int, int] = 224, title: str | None = None, layout: str = "C-C-T-T"):
    """The whole network, input to head: S0 to S4 (kind, L blocks, width D, heads, map size).

    ``config`` is a built CoAtNet (its own plan: layout and image size are the model's), or a
    configuration or its name in ``CONFIGS`` / ``RW_CONFIGS``, drawn with ``layout`` at ``image_size``."""
    from coatlib.models.coatnet import BLOCK_NAMES, CoAtNetBase, stage_plan
    from coatlib.models.coatnet_rw import RwConfig

    if isinstance(config, CoAtNetBase):
        plan, config = config.plan, config.config
    else:
        config = _config(config)
        plan = stage_plan(config, layout, image_size)
    stem, *runs = plan
    n = len(plan) + 2
    fig, ax = _new((1.9 * n, 3.0), (-0.6, 2 * n - 1.4), (-1.6, 1.6))
    x = 0.0
    previous = _box(ax, x, 0, f"input\n{stem.in_width} x {_hw(stem.size, stem.stride)}", "input", "input")
    for i, row in enumerate(plan):
        x += 2
        if row.kind == "stem" and row.stride == 16:
            text = f"{row.stage}: stem\n1 conv 16x16\n(stride 16)\nD={row.width}"
        elif row.kind == "stem":
            text = f"{row.stage}: stem\n2 conv 3x3\n(first stride 2)\nD={row.width}"
        else:
            text = f"{row.stage}: {BLOCK_NAMES[row.kind]}\nL={row.blocks}, D={row.width}"
            text += f"\n{row.heads} heads x {row.head_dim}" if row.kind == "T" else "\nexpansion 4, SE"
        text += f"\n{row.size[0]} x {row.size[1]}"
        split = i + 1 < len(plan) and plan[i + 1].stage == row.stage  # a stage of two runs: S3 of CoAtNet-6/7
        box = _box(ax, x, 0, text, KIND_COLOUR[row.kind], f"stage-{row.stage}" + ("-conv" if split else ""))
        _arrow(ax, previous, box)
        previous = box
    if isinstance(config, RwConfig):
        norm = "BatchNorm" if config.attn_norm == "batchnorm" else "LayerNorm"
        head = f"head\n{norm} on the map\navg pool\nlinear classifier"
    else:
        head = "head\navg pool, LayerNorm\npre-logits (tanh)\nlinear classifier"
    _arrow(ax, previous, _box(ax, x + 2, 0, head, KIND_COLOUR["head"], "head"))
    ax.text(0, -1.35, "each stage's first block halves the map", fontsize=8, color="#555555")
    _legend(ax, ["input", "conv", "attention", "mlp"], loc="upper left")
    if title:
        ax.set_title(title, fontsize=11)
    return fig


def _hw(size: tuple[int, int], stride: int) -> str:
    """The image's ``"H x W"`` from the stem's output size and stride."""
    return f"{size[0] * stride} x {size[1] * stride}"


# ---------------------------------------------------------------------------- blocks


def _block_widths(config, stage: int, downsample: bool, image_size: int):
    """``(config, in width, out width, map side)`` of a block of stage ``stage`` (1..4) of the C-C-T-T plan:
    its last run (S3 of CoAtNet-6/7: the Transformer blocks)."""
    from coatlib.models.coatnet import stage_plan

    config = _config(config)
    if stage not in (1, 2, 3, 4):
        raise ValueError(f"stage must be 1, 2, 3 or 4 (S1..S4), got {stage}")
    run = [r for r in stage_plan(config, "C-C-T-T", image_size) if r.stage == f"S{stage}"][-1]
    return config, run.in_width if downsample else run.width, run.width, run.size[0]


def mbconv_diagram(config, stage: int = 1, downsample: bool = True, image_size: int = 224, stride_on: str = "expand"):
    """CoAtNet's MBConv block of stage S1 or S2 (Eq. 5): pre-norm, expansion 4, depthwise 3x3, SE 0.25.

    With ``downsample`` the block is its stage's first: the shortcut is ``Proj(Pool(x))`` and the
    stride sits on the first 1x1 conv (``stride_on="expand"``, the paper's default) or on the
    depthwise conv (``"dw"``, the paper's Table 9)."""
    config, cin, cout, size = _block_widths(config, stage, downsample, image_size)
    if stage > 2:
        raise ValueError(
            "MBConv stages are S1 and S2 (S3 of CoAtNet-6/7 opens with MBConv blocks too: use stage 2's form)"
        )
    if stride_on not in ("expand", "dw"):
        raise ValueError(f"stride_on must be 'expand' or 'dw', got {stride_on!r}")
    mid, se = 4 * cout, cout // 4
    in_size = 2 * size if downsample else size
    s_exp = ", stride 2" if downsample and stride_on == "expand" else ""
    s_dw = ", stride 2" if downsample and stride_on == "dw" else ""
    main = [
        ("BatchNorm (pre-norm)", "norm"),
        (f"Conv 1x1{s_exp}: {cin} -> {mid}\nBatchNorm, GELU", "conv", bool(s_exp)),
        (f"DepthConv 3x3{s_dw}: {mid}\nBatchNorm, GELU", "conv", bool(s_dw)),
        (f"Squeeze-excitation\navg pool, {mid} -> {se} -> {mid}, sigmoid", "conv"),
        (f"Conv 1x1: {mid} -> {cout}", "conv"),
    ]
    shortcut = (
        [("MaxPool 2x2, stride 2", "norm", True), (f"Proj: Conv 1x1, {cin} -> {cout}", "conv", True)]
        if downsample
        else [("identity", "norm")]
    )
    title = f"MBConv, first block of S{stage} (down-sampling)" if downsample else f"MBConv, S{stage} (stride 1)"
    formula = (
        "x <- Proj(Pool(x)) + Conv(DepthConv(Conv(Norm(x), stride=2)))"
        if downsample and stride_on == "expand"
        else "x <- Proj(Pool(x)) + Conv(DepthConv(Conv(Norm(x)), stride=2))"
        if downsample
        else "x <- x + Conv(DepthConv(Conv(Norm(x))))"
    )
    return _residual_figure(
        f"x: {cin} x {in_size} x {in_size}",
        main,
        shortcut,
        f"{cout} x {size} x {size}",
        f"{title}\n{formula}",
        ["conv", "norm"],
    )


def transformer_diagram(config, stage: int = 3, downsample: bool = True, image_size: int = 224):
    """CoAtNet's Transformer block of stage S3 or S4 (Eq. 4): pre-norm relative attention and FFN.

    With ``downsample`` both branches of the attention half are pooled (2x2 max, stride 2), the
    attention branch *after* its LayerNorm: ``x <- Proj(Pool(x)) + Attention(Pool(LN(x)))``."""
    config, cin, cout, size = _block_widths(config, stage, downsample, image_size)
    if stage < 3:
        raise ValueError("Transformer stages are S3 and S4")
    if downsample and stage == 3 and config.s3_conv is not None:
        raise ValueError(
            "S3 of this configuration opens with MBConv blocks, which down-sample; its Transformer blocks do not"
        )
    heads, in_size = cout // config.head_dim, (2 * size if downsample else size)
    table = f"{heads} x {2 * size - 1} x {2 * size - 1}"
    attention = (
        [("LayerNorm", "norm")]
        + ([("MaxPool 2x2, stride 2", "norm", True)] if downsample else [])
        + [
            (
                f"Relative attention (Eq. 3, pre-softmax)\n{heads} heads x {config.head_dim}, on {size} x {size}\n"
                f"bias tables {table}",
                "attention",
            ),
        ]
    )
    shortcut = (
        [("MaxPool 2x2, stride 2", "norm", True), (f"Proj: Linear {cin} -> {cout}", "mlp", True)]
        if downsample
        else [("identity", "norm")]
    )
    ffn = [("LayerNorm", "norm"), (f"FFN: Linear {cout} -> {4 * cout}\nGELU, Linear {4 * cout} -> {cout}", "mlp")]
    title = f"Transformer block, first of S{stage} (down-sampling)" if downsample else f"Transformer block, S{stage}"
    formula = (
        "x <- Proj(Pool(x)) + Attention(Pool(LN(x)));  x <- x + FFN(LN(x))"
        if downsample
        else "x <- x + Attention(LN(x));  x <- x + FFN(LN(x))"
    )
    return _residual_figure(
        f"x: {in_size} x {in_size} x {cin} (channels last)",
        attention,
        shortcut,
        f"{size} x {size} x {cout}",
        f"{title}\n{formula}",
        ["attention", "mlp", "norm"],
        second=ffn,
    )


FIRST_BLOCK_EDGE = "#D55E00"  # the edge of the boxes only a stage's first (down-sampling) block has


def _residual_figure(top, main, shortcut, bottom, title, kinds, second=None):
    """Pre-norm residual block(s) drawn top to bottom: the branch on the left, the shortcut on the right.

    Each step is ``(text, kind)`` or ``(text, kind, True)``: a step only a stage's first block has
    (a stride, a pooling, the projection) gets a thick dashed edge and a legend entry, so that one
    diagram shows both blocks of a stage."""
    from matplotlib.patches import Patch

    steps = len(main) + 2 + (len(second) + 1 if second else 0)
    fig, ax = _new((COLUMN_WIDTH, 0.95 * steps + 1.3), (-3.4, 6.6), (-steps - 0.6, 1.0))
    font = 10  # the book's smallest text

    def box(x, y, step, gid):
        text, kind, *first_only = step
        artist = _box(ax, x, y, text, kind, gid, fontsize=font)
        if first_only and first_only[0]:
            artist.get_bbox_patch().set(edgecolor=FIRST_BLOCK_EDGE, linewidth=2.4, linestyle="--")
        return artist

    first = previous = _box(ax, 0, 0, top, "input", "input", fontsize=font)
    y = 0
    for i, step in enumerate(main):
        y -= 1
        here = box(0, y, step, f"main-{i}")
        _arrow(ax, previous, here)
        previous = here
    # the shortcut, beside the branch
    ys = np.linspace(-1, y, len(shortcut)) if len(shortcut) > 1 else [(y - 1) / 2]
    prev_s = first
    for i, (step, ys_i) in enumerate(zip(shortcut, ys)):
        here = box(4.0, ys_i, step, f"shortcut-{i}")
        _arrow(ax, prev_s, here)
        prev_s = here
    y -= 1
    total = _sum(ax, 0, y, "sum-0")
    _arrow(ax, previous, total)
    _arrow(ax, prev_s, total)
    previous = total
    if second:
        for i, step in enumerate(second):
            y -= 1
            here = box(0, y, step, f"second-{i}")
            _arrow(ax, previous, here)
            previous = here
        y -= 1
        total2 = _sum(ax, 0, y, "sum-1")
        _arrow(ax, previous, total2)
        _arrow(ax, total, total2, connectionstyle="arc,angleA=0,angleB=0,armA=150,armB=150,rad=0")
        ax.text(1.8, (y + total.get_position()[1]) / 2, "identity", fontsize=font, color="#555555", va="center")
        previous = total2
    y -= 1
    _arrow(ax, previous, _box(ax, 0, y, bottom, "input", "output", fontsize=font))
    ax.set_title(title, fontsize=11)
    names = {"conv": "convolution", "norm": "norm / pooling", "attention": "attention", "mlp": "linear / MLP"}
    handles = [Patch(facecolor=COLOURS[k], edgecolor="#444444", label=names[k]) for k in kinds]
    if any(len(step) > 2 and step[2] for step in main + shortcut):
        handles.append(
            Patch(
                facecolor="white",
                edgecolor=FIRST_BLOCK_EDGE,
                linewidth=2.4,
                linestyle="--",
                label="first block of a stage only\n(the others: stride 1, identity)",
            )
        )
    ax.legend(handles=handles, loc="lower right", fontsize=font, frameon=False)
    return fig


# ---------------------------------------------------------------------------- relative attention


def relative_attention_diagram(config="coatnet_0", stage: int = 3, image_size: int = 224):
    """Where the relative bias enters: before the softmax (pre, CoAtNet's choice) or after it (post).

    The sizes are those of one relative-attention layer of stage ``stage`` of ``config`` at
    ``image_size``: N tokens on an H x W map, ``heads`` heads of size ``head_dim``, and one bias
    table of (2H-1) x (2W-1) scalars per head, gathered into an N x N bias by the relative index.

    Drawn for the book's column: two panels side by side, 7.5 in wide, text of 10 pt."""
    config, _, width, size = _block_widths(config, stage, False, image_size)
    if stage < 3:
        raise ValueError("relative attention runs in S3 and S4")
    heads, d, n = width // config.head_dim, config.head_dim, size * size
    table = f"{heads} x {2 * size - 1} x {2 * size - 1}"
    import matplotlib.pyplot as plt

    fs = 10
    fig, axes = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 5.6), dpi=DPI, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.0)
    for ax, form in zip(axes, ("pre", "post")):
        ax.set_xlim(-1.45, 1.75)
        ax.set_ylim(-6.45, 0.45)
        ax.axis("off")
        g = f"{form}-"
        x = _box(ax, -0.45, 0, f"x: {n} tokens\nx {width} ({size} x {size})", "input", g + "input", fs)
        qkv = _box(ax, -0.45, -1, f"q, k, v = Linear(x)\n{heads} heads x {d}", "attention", g + "qkv", fs)
        logits = _box(ax, -0.45, -2, f"q k^T / sqrt({d})\n{heads} x {n} x {n}", "attention", g + "logits", fs)
        table_box = _box(ax, 1.05, -0.5, f"bias table\n{table}", "position", g + "table", fs)
        bias = _box(ax, 1.05, -2.0, f"bias =\ntable[index]\n{heads} x {n} x {n}", "position", g + "bias", fs)
        _arrow(ax, x, qkv)
        _arrow(ax, qkv, logits)
        _arrow(ax, table_box, bias, colour="#238b45")
        if form == "pre":
            order = [
                ("+", "sum"),
                (f"softmax over\nthe {n} keys", "attention"),
                (f"weights x v\n{heads} x {n} x {d}", "attention"),
            ]
        else:
            order = [
                (f"softmax over\nthe {n} keys", "attention"),
                ("+", "sum"),
                (f"weights x v\n{heads} x {n} x {d}", "attention"),
            ]
        y, previous = -2.0, logits
        for i, (text, kind) in enumerate(order):
            y -= 1.0
            if kind == "sum":
                box = _sum(ax, -0.45, y, g + "sum")
                _arrow(ax, bias, box, colour="#238b45")
            else:
                box = _box(ax, -0.45, y, text, kind, g + f"step-{i}", fs)
            _arrow(ax, previous, box)
            previous = box
        y -= 1.0
        _arrow(ax, previous, _box(ax, -0.45, y, f"concat heads,\nLinear {width} -> {width}", "mlp", g + "proj", fs))
        where = (
            "pre-softmax (CoAtNet)\nsoftmax(q k^T/sqrt(d) + bias)"
            if form == "pre"
            else "post-softmax\nsoftmax(q k^T/sqrt(d)) + bias"
        )
        ax.set_title(where, fontsize=11)
    # the legend of _legend, at the book's text size, below both panels
    _legend(axes[1], ["attention", "position", "mlp", "input"])
    legend = axes[1].get_legend()
    handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
    legend.remove()
    fig.legend(handles, labels, loc="outside lower center", fontsize=fs, ncols=2, frameon=False)
    return fig
