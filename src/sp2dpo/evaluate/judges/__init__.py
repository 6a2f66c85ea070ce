"""The eval stage's judges: one engine, one mode per kind of judgment.

- :mod:`.engine`: :class:`~.engine.JudgeEngine` (the backend, the eval call store, concurrency
  and stopping), the :class:`~.engine.JudgeMode` protocol, the judge's cache signature and its
  independence from the teachers;
- :mod:`.pairwise`: the AlpacaEval 2.0 pairwise judge (:class:`~.pairwise.PairwiseJudge`);
- :mod:`.graded`: the ``[[label]]`` judge of MT-Bench and Arena-Hard
  (:class:`~.graded.LabelGrader`);
- :mod:`.prompts`: the judge prompt folders.
"""
