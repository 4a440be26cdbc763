"""``from clearml.utilities.plotly_reporter import SeriesInfo``, with only the import changed.

The same class ``Model.report_line_plot`` takes: a name, ``(x, y)`` points, optional labels.
"""

from clearml_hooks.model_reporting import SeriesInfo

__all__ = ["SeriesInfo"]
