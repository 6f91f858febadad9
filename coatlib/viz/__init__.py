"""Every figure of the library, in one place.

* :mod:`~coatlib.viz.style`: the book's column, palette and text sizes (``use_book_style``);
* :mod:`~coatlib.viz.diagrams`: block diagrams of CoAtNet drawn from its stage plan;
* :mod:`~coatlib.viz.swin`: Swin's regular, shifted and rolled windows;
* :mod:`~coatlib.viz.stages`: a built CoAtNet's stages, as a table and as bars (``draw_stages``);
* :mod:`~coatlib.viz.inside`: bias tables, attention maps, receptive fields and depthwise kernels
  of a model, as measured by :mod:`coatlib.inspection`;
* :mod:`~coatlib.viz.studies`: the layout study's accuracy and ideal-world curves;
* :mod:`~coatlib.viz.training`: a training history.

Each function returns a matplotlib ``Figure`` and shows nothing by itself.
"""

from coatlib.viz.diagrams import (
    diagram_texts,
    mbconv_diagram,
    network_diagram,
    relative_attention_diagram,
    transformer_diagram,
)
from coatlib.viz.inside import plot_attention, plot_bias_tables, plot_depthwise_kernels, plot_receptive_fields
from coatlib.viz.stages import LEGEND, draw_stages, stage_legend, stage_table
from coatlib.viz.studies import LAYOUT_STYLE, plot_ideal_world, plot_layout_study
from coatlib.viz.style import COLUMN_WIDTH, MARKERS, PALETTE, use_book_style
from coatlib.viz.swin import swin_window_labels, swin_windows_figure
from coatlib.viz.training import plot_history

__all__ = [
    "use_book_style",
    "COLUMN_WIDTH",
    "PALETTE",
    "MARKERS",
    "network_diagram",
    "mbconv_diagram",
    "transformer_diagram",
    "relative_attention_diagram",
    "swin_window_labels",
    "swin_windows_figure",
    "diagram_texts",
    "stage_table",
    "draw_stages",
    "stage_legend",
    "LEGEND",
    "plot_bias_tables",
    "plot_attention",
    "plot_receptive_fields",
    "plot_depthwise_kernels",
    "plot_layout_study",
    "plot_ideal_world",
    "LAYOUT_STYLE",
    "plot_history",
]
