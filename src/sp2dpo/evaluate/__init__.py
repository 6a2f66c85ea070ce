"""The ``eval`` stage: AlpacaEval 2.0 (WR, LC), MT-Bench, IFEval and Arena-Hard-Auto, and the
held-out preference accuracy, for the base student and every trained adapter.

- :mod:`.suites`: one module per benchmark behind one protocol (:class:`.suites.base.Suite`),
  in a registry the stage, ``--estimate`` and the MLflow metrics loop over;
- :mod:`.benchmarks`: the official file formats and pure scoring (nothing answered or judged);
- :mod:`.answers`: student answers through the eval call store, in-process or from a server;
- :mod:`.judges`: one judge engine (backend, store, concurrency, stopping) with the pairwise
  AlpacaEval judge and the ``[[label]]`` grader;
- :mod:`.calls`: the eval call store; :mod:`.prefeval` and :mod:`.prefpairs`: the held-out
  metric; :mod:`.judge_run`: ``sp2dpo judge`` over a file;
- :mod:`.stage`: :func:`run`, one student (the DVC stage and ``sp2dpo eval``);
  :mod:`.estimate`: ``sp2dpo eval --estimate``.
"""

from sp2dpo.evaluate.stage import EvalPaths, evaluated_methods, metric_sections, run

__all__ = ["EvalPaths", "evaluated_methods", "metric_sections", "run"]
