"""Questions about a model's parts that training and its memory plan ask of any model.

* ``blocks_of(model)``: the repeated blocks, the units FSDP shards and activation checkpointing
  recomputes (``coatlib.train``), and that ``coatlib.memory`` counts one by one;
* ``has_batchnorm(model)``: FSDP then gathers float32 weights;
* ``param_groups(model, ...)``: AdamW's groups, the weights that decay and those that do not
  (biases, norm scales, relative-bias tables, position embeddings);
* ``describe_model(model)``: one line naming it in an error message.
"""

from __future__ import annotations

import torch.nn as nn

# Position parameters are not weights to shrink: decaying a relative-bias table pulls every
# attention towards uniform (as timm and the Swin and ViT recipes, they are exempt).
NO_DECAY_NAMES = ("relative_bias_table", "pos_embed", "cls_token")
TABLE_NAME = "relative_bias_table"


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The model's blocks, the units that FSDP shards and activation checkpointing recomputes.

    They are the children of every submodule whose name ends in ``blocks`` and
    that is an ``nn.ModuleList`` or ``nn.Sequential``: ``blocks.3`` in ViT,
    ``stages.2.blocks.3`` in ConvNeXt. Blocks inside a block already found are
    part of it. An empty list when the model has none.
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        inside_a_block = any(name.startswith(outer + ".") for outer, _ in found)
        if (
            name.rsplit(".", 1)[-1] == "blocks"
            and isinstance(module, (nn.ModuleList, nn.Sequential))
            and not inside_a_block
        ):
            found += [(f"{name}.{child_name}", child) for child_name, child in module.named_children()]
    return [block for _, block in found]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer (FSDP then gathers its weights in float32)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def has_trainable_tables(model: nn.Module) -> bool:
    """Whether ``model`` has relative-bias tables (parameters named ``*.relative_bias_table``) that train."""
    return any(n.endswith(TABLE_NAME) and p.requires_grad for n, p in model.named_parameters())


def param_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, table_lr_scale: float = 1.0
) -> list[dict]:
    """AdamW's parameter groups: the weights that decay, the rest; with ``table_lr_scale != 1`` the
    relative-bias tables leave the second group for a third with learning rate ``lr * table_lr_scale``
    (the scheduler's factor multiplies each group's own rate, so the ratio holds at every step)."""
    groups: dict[bool, list[nn.Parameter]] = {True: [], False: []}
    tables: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if table_lr_scale != 1 and name.endswith(TABLE_NAME):
            tables.append(p)
        else:
            groups[p.ndim >= 2 and not name.endswith(NO_DECAY_NAMES)].append(p)
    out = [{"params": groups[True], "weight_decay": weight_decay}, {"params": groups[False], "weight_decay": 0.0}]
    if tables:
        if lr is None:
            raise ValueError("a table learning-rate scale needs the base learning rate lr")
        out.append({"params": tables, "weight_decay": 0.0, "lr": lr * table_lr_scale})
    return out


def describe_model(model: nn.Module) -> str:
    """``"a CoAtNet with 312,774 parameters"``: the model a checkpoint belongs to, for error messages."""
    return (
        f"a {type(model).__name__.removeprefix('FSDP')} with {sum(p.numel() for p in model.parameters()):,} parameters"
    )
