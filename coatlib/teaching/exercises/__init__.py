"""Automatic checks for the book's exercises, one module per chapter.

Every code exercise asks for a function and has a check here, called in the
notebook right after the exercise::

    check_depthwise_conv(depthwise_conv)

The check calls the reader's function on random inputs (fixed seed, several
shapes), compares each answer with the reference and prints one report line:
``check_depthwise_conv: correct``, or ``check_depthwise_conv: not yet.``
followed by what is wrong (a shape, the first position where the values
differ, the values there) and a hint when the answer matches a common mistake.

A wrong answer never raises: the check returns a :class:`CheckResult` (falsy
when wrong) so the notebook goes on. ``CHECKS`` maps each check's name to its
function, for graders. The cell conventions of exercises and solutions are
described in :mod:`coatlib.teaching.book`.

The checks live in one module per chapter (``ch1_depthwise`` ... ``ch7_scaling``, with
``ch5c_inside`` for chapter 5c)
and are all importable from here.
"""

from coatlib.teaching.exercises._base import CHECKS, CheckResult, Wrong
from coatlib.teaching.exercises.ch1_depthwise import (
    check_depthwise_conv,
    check_mbconv_macs,
    check_receptive_field,
    receptive_field,
)
from coatlib.teaching.exercises.ch2_attention import (
    check_attention_macs,
    check_masked_attention,
    check_patchify,
    masked_attention,
)
from coatlib.teaching.exercises.ch3_relative import (
    check_clipped_bias,
    check_relative_index,
    check_static_kernel,
    clipped_bias,
    relative_attention,
)
from coatlib.teaching.exercises.ch4_layouts import (
    check_attention_memory,
    check_window_attention_macs,
    check_window_partition,
)
from coatlib.teaching.exercises.ch5_coatnet import (
    bias_params,
    check_bias_params,
    check_resize_table,
    check_transformer_params,
)
from coatlib.teaching.exercises.ch5c_inside import (
    check_centre_gradient,
    check_flat_locality,
    check_gaussian_table,
    flat_locality,
    gaussian_table,
)
from coatlib.teaching.exercises.ch6_family import check_scale_stage, check_shift_mask
from coatlib.teaching.exercises.ch7_scaling import (
    check_channels_last_strides,
    check_ddp_gradient,
    check_fsdp_state_bytes,
    check_round_to_bf16,
    check_shard_indices,
)

__all__ = [
    "CHECKS",
    "CheckResult",
    "Wrong",
    "check_depthwise_conv",
    "check_mbconv_macs",
    "check_receptive_field",
    "receptive_field",
    "check_masked_attention",
    "masked_attention",
    "check_patchify",
    "check_attention_macs",
    "check_relative_index",
    "check_clipped_bias",
    "clipped_bias",
    "check_static_kernel",
    "relative_attention",
    "check_attention_memory",
    "check_window_attention_macs",
    "check_window_partition",
    "check_bias_params",
    "bias_params",
    "check_transformer_params",
    "check_resize_table",
    "check_centre_gradient",
    "check_flat_locality",
    "flat_locality",
    "check_gaussian_table",
    "gaussian_table",
    "check_scale_stage",
    "check_shift_mask",
    "check_channels_last_strides",
    "check_round_to_bf16",
    "check_shard_indices",
    "check_ddp_gradient",
    "check_fsdp_state_bytes",
]
