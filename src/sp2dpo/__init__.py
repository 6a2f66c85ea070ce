"""sp2dpo: semantic per-pair DPO as an artifact-versioned pipeline.

Layers, imports only pointing down (docs/architecture.md):

1. :mod:`sp2dpo.core`: typed params, schemas, validated atomic I/O, the beta artifact reader,
   errors and entry helpers;
2. :mod:`sp2dpo.llm` (teachers and judge: HTTP client, in-process scorer, model loading) and
   :mod:`sp2dpo.tracking` (MLflow);
3. one package per stage, never importing another: :mod:`sp2dpo.data` (fetch, filter),
   :mod:`sp2dpo.annotate`, :mod:`sp2dpo.aggregate`, :mod:`sp2dpo.train`,
   :mod:`sp2dpo.evaluate`, :mod:`sp2dpo.report`, :mod:`sp2dpo.audit`;
4. :mod:`sp2dpo.cli` (the ``sp2dpo`` command) and the DVC stage scripts in ``stages/``.
"""

__version__ = "0.1.0"
