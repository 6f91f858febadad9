"""Block diagrams of CoAtNet, drawn from a configuration so that they stay true.

Every diagram is computed from a :class:`coatlib.models.coatnet.CoAtNetConfig`
(its fields ``stem``, ``depths``, ``widths``, ``head_dim`` and ``s3_conv``) and
an image size, never from a built model: the numbers written in the boxes are
the configuration's. Each function returns a matplotlib ``Figure``; every box
is a text artist with a ``gid`` naming its part (``"stage-S3"``,
``"main-2"``, ``"shortcut-1"``, ``"bias"``, ...), which is what the tests read.

>>> from coatlib.diagrams import network_diagram
>>> fig = network_diagram("coatnet_0", image_size=224)   # S0..S4 with L, D, heads and map sizes

The diagrams:

* :func:`network_diagram`: the whole network, stem S0 to S4 and the head;
* :func:`mbconv_diagram`: the MBConv block, with or without down-sampling (the
  paper's Eq. 5);
* :func:`transformer_diagram`: the Transformer block, with or without
  down-sampling (Eq. 4);
* :func:`relative_attention_diagram`: relative attention, where the bias enters
  before (pre) or after (post) the softmax (Eq. 3);
* :func:`swin_windows_figure`: Swin's regular windows, the shifted windows and
  the rolled map (chapter 6), from :func:`swin_window_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "StageRow",
    "stage_rows",
    "network_diagram",
    "mbconv_diagram",
    "transformer_diagram",
    "relative_attention_diagram",
    "swin_window_labels",
    "swin_windows_figure",
    "diagram_texts",
]

DPI = 120
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
KIND_COLOUR = {"stem": "conv", "MBConv": "conv", "TFMRel": "attention"}


@dataclass(frozen=True)
class StageRow:
    """One run of blocks: ``blocks`` blocks of ``kind`` with ``width`` channels on a ``size`` x ``size`` map."""

    stage: str
    kind: str  # "stem", "MBConv" or "TFMRel"
    blocks: int
    width: int
    size: int
    heads: int | None = None


def _config(config):
    if isinstance(config, str):
        from coatlib.models.coatnet import CONFIGS

        if config not in CONFIGS:
            raise ValueError(f"unknown CoAtNet configuration {config!r}; known: {', '.join(CONFIGS)}")
        return CONFIGS[config]
    return config


def _check_size(image_size: int) -> None:
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (five stages halve it), got {image_size}")


def stage_rows(config, image_size: int = 224) -> list[StageRow]:
    """The stages of ``config`` (a ``CoAtNetConfig`` or a name in ``CONFIGS``) at ``image_size``."""
    config = _config(config)
    _check_size(image_size)
    rows = [StageRow("S0", "stem", 2, config.stem, image_size // 2)]
    for i, (depth, width) in enumerate(zip(config.depths, config.widths), start=1):
        size = image_size // 2 ** (i + 1)
        if i <= 2:
            rows.append(StageRow(f"S{i}", "MBConv", depth, width, size))
            continue
        if i == 3 and config.s3_conv is not None:
            rows.append(StageRow("S3", "MBConv", config.s3_conv[0], config.s3_conv[1], size))
        rows.append(StageRow(f"S{i}", "TFMRel", depth, width, size, width // config.head_dim))
    return rows


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


def network_diagram(config, image_size: int = 224, title: str | None = None):
    """The whole network: input, S0 to S4 (kind, L blocks, width D, heads, map size) and the head."""
    rows = stage_rows(config, image_size)
    n = len(rows) + 2
    fig, ax = _new((1.9 * n, 3.0), (-0.6, 2 * n - 1.4), (-1.6, 1.6))
    x = 0.0
    previous = _box(ax, x, 0, f"input\n3 x {image_size} x {image_size}", "input", "input")
    for row in rows:
        x += 2
        if row.kind == "stem":
            text = f"{row.stage}: stem\n2 conv 3x3\n(first stride 2)\nD={row.width}"
        else:
            text = f"{row.stage}: {row.kind}\nL={row.blocks}, D={row.width}"
            text += f"\n{row.heads} heads x {row.width // row.heads}" if row.heads else "\nexpansion 4, SE"
        text += f"\n{row.size} x {row.size}"
        gid = f"stage-{row.stage}" + ("-conv" if row.stage == "S3" and row.kind == "MBConv" else "")
        box = _box(ax, x, 0, text, KIND_COLOUR[row.kind], gid)
        _arrow(ax, previous, box)
        previous = box
    _arrow(
        ax,
        previous,
        _box(ax, x + 2, 0, "head\navg pool, LayerNorm\npre-logits (tanh)\nlinear classifier", "mlp", "head"),
    )
    ax.text(0, -1.35, "each stage's first block halves the map", fontsize=8, color="#555555")
    _legend(ax, ["input", "conv", "attention", "mlp"], loc="upper left")
    if title:
        ax.set_title(title, fontsize=11)
    return fig


# ---------------------------------------------------------------------------- blocks


def _block_widths(config, stage: int, downsample: bool, image_size: int):
    config = _config(config)
    _check_size(image_size)
    if stage not in (1, 2, 3, 4):
        raise ValueError(f"stage must be 1, 2, 3 or 4 (S1..S4), got {stage}")
    size = image_size // 2 ** (stage + 1)
    previous = config.stem if stage == 1 else config.widths[stage - 2]
    cin = previous if downsample else config.widths[stage - 1]
    return config, cin, config.widths[stage - 1], size


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
        (f"Conv 1x1{s_exp}: {cin} -> {mid}\nBatchNorm, GELU", "conv"),
        (f"DepthConv 3x3{s_dw}: {mid}\nBatchNorm, GELU", "conv"),
        (f"Squeeze-excitation\navg pool, {mid} -> {se} -> {mid}, sigmoid", "conv"),
        (f"Conv 1x1: {mid} -> {cout}", "conv"),
    ]
    shortcut = (
        [("MaxPool 2x2, stride 2", "norm"), (f"Proj: Conv 1x1, {cin} -> {cout}", "conv")]
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
        + ([("MaxPool 2x2, stride 2", "norm")] if downsample else [])
        + [
            (
                f"Relative attention (Eq. 3, pre-softmax)\n{heads} heads x {config.head_dim}, on {size} x {size}\n"
                f"bias tables {table}",
                "attention",
            ),
        ]
    )
    shortcut = (
        [("MaxPool 2x2, stride 2", "norm"), (f"Proj: Linear {cin} -> {cout}", "mlp")]
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


def _residual_figure(top, main, shortcut, bottom, title, kinds, second=None):
    """Pre-norm residual block(s) drawn top to bottom: the branch on the left, the shortcut on the right."""
    steps = len(main) + 2 + (len(second) + 1 if second else 0)
    fig, ax = _new((7.6, 0.95 * steps + 1.2), (-3.2, 6.4), (-steps - 0.6, 1.0))
    first = previous = _box(ax, 0, 0, top, "input", "input")
    y = 0
    for i, (text, kind) in enumerate(main):
        y -= 1
        box = _box(ax, 0, y, text, kind, f"main-{i}")
        _arrow(ax, previous, box)
        previous = box
    # the shortcut, beside the branch
    ys = np.linspace(-1, y, len(shortcut)) if len(shortcut) > 1 else [(y - 1) / 2]
    prev_s = first
    for i, ((text, kind), ys_i) in enumerate(zip(shortcut, ys)):
        box = _box(ax, 3.9, ys_i, text, kind, f"shortcut-{i}")
        _arrow(ax, prev_s, box)
        prev_s = box
    y -= 1
    total = _sum(ax, 0, y, "sum-0")
    _arrow(ax, previous, total)
    _arrow(ax, prev_s, total)
    previous = total
    if second:
        for i, (text, kind) in enumerate(second):
            y -= 1
            box = _box(ax, 0, y, text, kind, f"second-{i}")
            _arrow(ax, previous, box)
            previous = box
        y -= 1
        total2 = _sum(ax, 0, y, "sum-1")
        _arrow(ax, previous, total2)
        _arrow(ax, total, total2, connectionstyle="arc,angleA=0,angleB=0,armA=150,armB=150,rad=0")
        ax.text(1.8, (y + total.get_position()[1]) / 2, "identity", fontsize=8, color="#555555", va="center")
        previous = total2
    y -= 1
    _arrow(ax, previous, _box(ax, 0, y, bottom, "input", "output"))
    ax.set_title(title, fontsize=10)
    _legend(ax, kinds, loc="lower right")
    return fig


# ---------------------------------------------------------------------------- relative attention


def relative_attention_diagram(config="coatnet_0", stage: int = 3, image_size: int = 224):
    """Where the relative bias enters: before the softmax (pre, CoAtNet's choice) or after it (post).

    The sizes are those of one relative-attention layer of stage ``stage`` of ``config`` at
    ``image_size``: N tokens on an H x W map, ``heads`` heads of size ``head_dim``, and one bias
    table of (2H-1) x (2W-1) scalars per head, gathered into an N x N bias by the relative index."""
    config, _, width, size = _block_widths(config, stage, False, image_size)
    if stage < 3:
        raise ValueError("relative attention runs in S3 and S4")
    heads, d, n = width // config.head_dim, config.head_dim, size * size
    table = f"{heads} x {2 * size - 1} x {2 * size - 1}"
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12.5, 6.4), dpi=DPI, layout="constrained")
    for ax, form in zip(axes, ("pre", "post")):
        ax.set_xlim(-3.4, 4.6)
        ax.set_ylim(-7.6, 0.8)
        ax.axis("off")
        g = f"{form}-"
        x = _box(ax, 0, 0, f"x: {n} tokens x {width}\n({size} x {size} map)", "input", g + "input")
        qkv = _box(ax, 0, -1, f"q, k, v = Linear(x)\n{heads} heads x {d}", "attention", g + "qkv")
        logits = _box(ax, 0, -2, f"logits q k^T / sqrt({d})\n{heads} x {n} x {n}", "attention", g + "logits")
        table_box = _box(ax, 3.3, -0.4, f"bias table\n{table}\n(one scalar per offset)", "position", g + "table")
        bias = _box(ax, 3.3, -1.9, f"bias[i, j] =\ntable[index(i - j)]\n{heads} x {n} x {n}", "position", g + "bias")
        _arrow(ax, x, qkv)
        _arrow(ax, qkv, logits)
        _arrow(ax, table_box, bias, colour="#238b45")
        if form == "pre":
            order = [
                ("+", "sum"),
                (f"softmax over the {n} keys", "attention"),
                (f"weights x v\n{heads} x {n} x {d}", "attention"),
            ]
        else:
            order = [
                (f"softmax over the {n} keys", "attention"),
                ("+", "sum"),
                (f"weights x v\n{heads} x {n} x {d}", "attention"),
            ]
        y, previous = -2, logits
        for i, (text, kind) in enumerate(order):
            y -= 1.1
            if kind == "sum":
                box = _sum(ax, 0, y, g + "sum")
                _arrow(ax, bias, box, colour="#238b45")
            else:
                box = _box(ax, 0, y, text, kind, g + f"step-{i}")
            _arrow(ax, previous, box)
            previous = box
        y -= 1.1
        _arrow(ax, previous, _box(ax, 0, y, f"concatenate heads, Linear {width} -> {width}", "mlp", g + "proj"))
        where = (
            "pre-softmax (CoAtNet): softmax(q k^T/sqrt(d) + bias)\nweights stay a normalised average"
            if form == "pre"
            else "post-softmax: softmax(q k^T/sqrt(d)) + bias\nattention plus a static kernel"
        )
        ax.set_title(where, fontsize=10)
    _legend(axes[1], ["attention", "position", "mlp", "input"], loc="lower right")
    fig.suptitle(
        f"Relative attention in S{stage} of this configuration at {image_size} x {image_size} (Eq. 3)", fontsize=11
    )
    return fig


# ---------------------------------------------------------------------------- Swin's windows


def swin_window_labels(height: int = 8, width: int = 8, window: int = 4, shift: int = 2) -> dict[str, np.ndarray]:
    """Three ``(height, width)`` label maps of Swin's windows (chapter 6):

    * ``"regular"``: the window of each token in the regular grid (W-MSA);
    * ``"shifted"``: the piece of each token when the window grid itself moves by ``shift``
      (without wrapping around): windows cut at the border, ``((H - shift) / window + 1) *
      ((W - shift) / window + 1)`` pieces, 9 for an 8 x 8 map with 4 x 4 windows;
    * ``"rolled"``: after rolling the map by ``-shift`` (``torch.roll``), the region each token
      comes from; the regular grid of windows then holds these regions, and tokens of different
      regions in one window must not attend to each other.
    """
    if height % window or width % window or not 0 < shift < window:
        raise ValueError("height and width must be multiples of window, and 0 < shift < window")
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    regular = rows // window * (width // window) + cols // window
    pieces_per_row = (width - shift + window - 1) // window + 1
    shifted = (rows + window - shift) // window * pieces_per_row + (cols + window - shift) // window

    def region(p, length):
        return (p >= length - window).astype(int) + (p >= length - shift).astype(int)

    rolled = region(rows, height) * 3 + region(cols, width)
    return {"regular": regular, "shifted": shifted, "rolled": rolled}


def swin_windows_figure(height: int = 8, width: int = 8, window: int = 4, shift: int = 2):
    """The three label maps of :func:`swin_window_labels`, numbered, with the window borders drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    labels = swin_window_labels(height, width, window, shift)
    n_regular = len(np.unique(labels["regular"]))
    n_shifted = len(np.unique(labels["shifted"]))
    n_rolled = len(np.unique(labels["rolled"]))
    titles = {
        "regular": f"W-MSA:\n{n_regular} regular windows",
        "shifted": f"grid shifted by {shift}:\n{n_shifted} unequal pieces",
        "rolled": f"map rolled by {shift}:\n{n_rolled} regions in {n_regular} windows",
    }
    light = plt.get_cmap("tab20").colors[1::2] + plt.get_cmap("Pastel2").colors  # light: the numbers stay legible
    palette = ListedColormap(light[: max(n_shifted, n_rolled, n_regular)])
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 3.2), dpi=150, layout="constrained")  # the book's column
    for ax, (key, values) in zip(axes, labels.items()):
        ax.imshow(values, cmap=palette, vmin=-0.5, vmax=palette.N - 0.5)  # colour = label, nothing else
        for r in range(height):
            for c in range(width):
                ax.text(c, r, int(values[r, c]), ha="center", va="center", fontsize=10)
        borders = (
            range(shift, max(height, width), window) if key == "shifted" else range(window, max(height, width), window)
        )
        for b in borders:
            if b < height:
                ax.axhline(b - 0.5, color="black", lw=3)
            if b < width:
                ax.axvline(b - 0.5, color="black", lw=3)
        ax.set_title(titles[key], fontsize=10, gid=f"title-{key}")
        ax.set(xlabel="column", ylabel="row")
    return fig
