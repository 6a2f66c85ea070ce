"""The ``eval`` stage: AlpacaEval 2.0 (pairwise judge, win rate, length-controlled win rate) and
IFEval (rule-based) for the base student and every trained adapter.

- :mod:`.alpaca`: AlpacaEval file formats and their checks;
- :mod:`.winrate` and :mod:`.lc`: the leaderboard metrics and the length-controlled GLM;
- :mod:`.generate`: batched student answers;
- :mod:`.judges`: the judge engine, the pairwise judge and the ``[[label]]`` grader;
- :mod:`.ifeval`, :mod:`.ifeval_inputs`, :mod:`.ifeval_checkers`, :mod:`.punkt`: offline IFEval;
- :mod:`.stage`: :func:`run`, one student (the DVC stage and ``sp2dpo eval``).
"""

from sp2dpo.evaluate.stage import EvalPaths, evaluated_methods, metric_sections, run

__all__ = ["EvalPaths", "evaluated_methods", "metric_sections", "run"]
