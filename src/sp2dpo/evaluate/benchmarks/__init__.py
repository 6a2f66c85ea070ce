"""The benchmarks' official file formats and pure scoring, apart from answering and judging.

- :mod:`.alpaca`: AlpacaEval file formats and their checks; :mod:`.winrate` and :mod:`.lc`: the
  leaderboard metrics and the length-controlled GLM;
- :mod:`.mtbench`: MT-Bench questions, FastChat's judge templates and scores;
- :mod:`.arenahard`, :mod:`.bradley_terry`: Arena-Hard-Auto files, verdicts, battles and the
  Bradley-Terry fit with its bootstrap;
- :mod:`.ifeval`, :mod:`.ifeval_inputs`, :mod:`.ifeval_checkers`, :mod:`.punkt`: offline IFEval;
- :mod:`.evalfiles`: the readers of answer files shared by the ``sp2dpo`` scoring commands.

Nothing here loads a model or calls a judge.
"""
