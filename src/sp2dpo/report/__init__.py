"""The ``report`` stage and the reading aids around it.

- :mod:`.results`: every student's eval report combined, laid out like the paper's Table 2;
- :mod:`.index`: ``reports/index.md``, one page linking every report;
- :mod:`.plots_html`: the offline HTML template for ``dvc plots show``;
- :mod:`.stage`: :func:`run`, the stage (the DVC stage and ``sp2dpo report``).
"""

from sp2dpo.report.stage import ReportPaths, run

__all__ = ["ReportPaths", "run"]
