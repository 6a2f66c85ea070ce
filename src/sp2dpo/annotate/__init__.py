"""The ``annotate`` stage: teachers x prompt variants label each pair's semantic gap.

- :mod:`.prompts`: versioned prompt templates rendered into chat messages;
- :mod:`.plan`: which pairs and calls, what is cached, the cost estimate;
- :mod:`.execute`: the calls, one thread pool per teacher;
- :mod:`.report`: the call table and the report;
- :mod:`.stage`: :func:`run`, the stage (the DVC stage and ``sp2dpo annotate``).

The teachers themselves (HTTP client, in-process scorer, retries, parsing) live in
:mod:`sp2dpo.llm`, shared with the judge.
"""

from sp2dpo.annotate.execute import Interrupted
from sp2dpo.annotate.plan import call_key
from sp2dpo.annotate.stage import AnnotatePaths, TransientFailures, run
from sp2dpo.llm.callstore import CallStore

__all__ = ["AnnotatePaths", "CallStore", "Interrupted", "TransientFailures", "call_key", "run"]
