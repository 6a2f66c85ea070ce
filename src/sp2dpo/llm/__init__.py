"""Layer 2, the LLMs: what the teachers (``annotate``) and the judge (``evaluate``) share.

- :mod:`~sp2dpo.llm.models`: packaged small models (GGUF from PyPI, converted once) and loading
  any model spec at a pinned revision;
- :mod:`~sp2dpo.llm.client`: the OpenAI-compatible HTTP client (provider presets, one attempt,
  rate limits, key hygiene);
- :mod:`~sp2dpo.llm.prompt_fit`: rendering chat messages and trimming them to a token budget;
- :mod:`~sp2dpo.llm.logprobs`: an in-process model scoring candidate strings by log-probability
  (one cached prompt, one trie pass per candidate set), and the constrained choice among them;
- :mod:`~sp2dpo.llm.gap_answer`: the semantic-gap answer's layout, category pick and grid mean;
- :mod:`~sp2dpo.llm.local`: the in-process teacher that writes that answer by log-probabilities
  (:data:`~sp2dpo.llm.local.SCORER_VERSION` names its behaviour in the call keys);
- :mod:`~sp2dpo.llm.parse`: parsing a semantic-gap reply;
- :mod:`~sp2dpo.llm.costs`: the characters-per-token estimate and the price formula of every
  paid call;
- :mod:`~sp2dpo.llm.callstore`: the append-only call store that doubles as the cache of
  every paid call (teachers, judges, answer servers);
- :mod:`~sp2dpo.llm.teachers`: one retry-and-backoff loop over either backend.

Importing this package loads nothing (no torch, no requests); import the module you need.
"""
