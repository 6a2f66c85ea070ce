"""The ``eval`` stage: AlpacaEval 2.0 (pairwise judge, win rate, length-controlled win rate) and
IFEval (rule-based) for the base student and every trained adapter.

Modules: ``alpaca`` (AlpacaEval file formats and checks), ``winrate`` (the leaderboard metrics and
the length-controlled GLM), ``generate`` (batched student answers), ``judge`` (the pairwise
annotator), ``ifeval`` (offline IFEval scoring), ``run`` (the stage).
"""
