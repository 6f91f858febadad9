"""Automatic checks for the book's exercises, one module per chapter.

Every code exercise asks for a function and has a check here, called in the
notebook right after the exercise::

    check_depthwise_conv(depthwise_conv)

The check calls the reader's function on random inputs (fixed seed, several
shapes), compares each answer with the reference and prints one report line:
``check_depthwise_conv: correct``, or ``check_depthwise_conv: not yet.``
followed by what is wrong (a shape, the first position where the values
differ, the values there) and a hint when the answer matches a common mistake.

A check refuses ``coatlib``'s and PyTorch's own functions, and an exercise that asks
the reader not to use a library call (``F.conv2d``, ``F.scaled_dot_product_attention``,
``relative_position_index``, ...) runs the reader's function with that call made to
raise, and names it. The reference answers are private (``_solutions``), under names
other than the ones the readers write.

A wrong answer never raises: the check returns a :class:`CheckResult` (falsy
when wrong) so the notebook goes on. ``CHECKS`` maps each check's name to its
function, for graders. The cell conventions of exercises and solutions are
described in :mod:`coatlib.teaching.book`.

The checks live in one module per chapter (``ch1_depthwise`` ... ``ch7_scaling``, with
``ch5b_trained`` and ``ch5c_inside`` for chapters 5b and 5c)
and are all importable from here.
"""

from dataclasses import dataclass

from coatlib.teaching.exercises.ch1_depthwise import (
    check_depthwise_conv,
    check_mbconv_macs,
    check_receptive_field,
)
from coatlib.teaching.exercises.ch2_attention import (
    check_attention_macs,
    check_masked_attention,
    check_patchify,
)
from coatlib.teaching.exercises.ch3_relative import (
    check_clipped_bias,
    check_relative_index,
    check_static_kernel,
)
from coatlib.teaching.exercises.ch4_layouts import (
    check_attention_memory,
    check_window_attention_macs,
    check_window_partition,
)
from coatlib.teaching.exercises.ch5_coatnet import (
    check_bias_params,
    check_resize_table,
    check_transformer_params,
)
from coatlib.teaching.exercises.ch5b_trained import check_attended_key
from coatlib.teaching.exercises.ch5c_inside import (
    check_centre_gradient,
    check_flat_locality,
    check_gaussian_table,
)
from coatlib.teaching.exercises.ch6_family import check_scale_stage, check_shift_mask
from coatlib.teaching.exercises.ch7_scaling import (
    check_channels_last_strides,
    check_ddp_gradient,
    check_fsdp_state_bytes,
    check_round_to_bf16,
    check_shard_indices,
)
from coatlib.teaching.exercises.checking import CHECKS, CheckResult, Wrong

__all__ = [
    "CHECKS",
    "EXERCISES",
    "Exercise",
    "CheckResult",
    "Wrong",
    "check_depthwise_conv",
    "check_mbconv_macs",
    "check_receptive_field",
    "check_masked_attention",
    "check_patchify",
    "check_attention_macs",
    "check_relative_index",
    "check_clipped_bias",
    "check_static_kernel",
    "check_attention_memory",
    "check_window_attention_macs",
    "check_window_partition",
    "check_bias_params",
    "check_transformer_params",
    "check_resize_table",
    "check_attended_key",
    "check_centre_gradient",
    "check_flat_locality",
    "check_gaussian_table",
    "check_scale_stage",
    "check_shift_mask",
    "check_channels_last_strides",
    "check_round_to_bf16",
    "check_shard_indices",
    "check_ddp_gradient",
    "check_fsdp_state_bytes",
]


@dataclass(frozen=True)
class Exercise:
    """A code exercise: its label in the book, the function the reader writes and the check that grades it."""

    label: str
    function: str
    check: str


EXERCISES: dict[str, list[Exercise]] = {
    "01_depthwise_convolution": [
        Exercise("ex-depthwise-shift-add", "depthwise_conv", "check_depthwise_conv"),
        Exercise("ex-mbconv-macs", "mbconv_macs", "check_mbconv_macs"),
        Exercise("ex-receptive-field", "receptive_field", "check_receptive_field"),
    ],
    "02_self_attention": [
        Exercise("ex-masked-attention", "masked_attention", "check_masked_attention"),
        Exercise("ex-patchify", "patchify", "check_patchify"),
        Exercise("ex-attention-macs", "attention_macs", "check_attention_macs"),
    ],
    "03_relative_attention": [
        Exercise("ex-relative-index", "relative_index", "check_relative_index"),
        Exercise("ex-clipped-bias", "clipped_bias", "check_clipped_bias"),
        Exercise("ex-static-kernel", "static_kernel", "check_static_kernel"),
    ],
    "04_vertical_layouts": [
        Exercise("ex-attention-memory", "attention_memory", "check_attention_memory"),
        Exercise("ex-window-partition", "window_partition", "check_window_partition"),
        Exercise("ex-window-macs", "window_attention_macs", "check_window_attention_macs"),
    ],
    "05_coatnet": [
        Exercise("ex-bias-table-size", "bias_params", "check_bias_params"),
        Exercise("ex-transformer-params", "transformer_params", "check_transformer_params"),
    ],
    "05_2_family": [
        Exercise("ex-resize-table", "resize_table", "check_resize_table"),
    ],
    "05b_trained_coatnet": [
        Exercise("ex-rw-attended-key", "attended_key", "check_attended_key"),
    ],
    "05c_inside_coatnet": [
        Exercise("ex-inside-flat-locality", "flat_locality", "check_flat_locality"),
    ],
    "05c_2_heads_and_fields": [
        Exercise("ex-inside-gaussian", "gaussian_table", "check_gaussian_table"),
        Exercise("ex-inside-centre-gradient", "centre_gradient", "check_centre_gradient"),
    ],
    "06_family_tree": [
        Exercise("ex-scale-stage", "scale_stage", "check_scale_stage"),
        Exercise("ex-shift-mask", "shifted_window_mask", "check_shift_mask"),
    ],
    "07_scaling_up": [
        Exercise("ex-channels-last-strides", "channels_last_strides", "check_channels_last_strides"),
        Exercise("ex-round-bf16", "round_to_bf16", "check_round_to_bf16"),
    ],
    "07_2_many_processes": [
        Exercise("ex-shard-indices", "shard_indices", "check_shard_indices"),
        Exercise("ex-ddp-gradient", "ddp_gradient", "check_ddp_gradient"),
        Exercise("ex-fsdp-state", "fsdp_state_bytes", "check_fsdp_state_bytes"),
    ],
}
"""The code exercises of each chapter (by notebook file name, without ``.ipynb``), in order: what the
grader grades, from the installed package, whatever a submitted notebook says."""
