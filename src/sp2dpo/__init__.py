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

Importing the package pins the CPU numerics first (:mod:`sp2dpo.numerics`, layer 0 beside this
root: standard library only), so every entry point runs torch's AVX2 kernels on any x86-64 CPU.
"""

__version__ = "0.1.0"

# Before anything imports torch: the CPU kernels pinned to AVX2 (sp2dpo.numerics), so outputs
# are the same bytes on every x86-64 CPU; SP2DPO_NUMERICS=native turns it off.
from sp2dpo import numerics as _numerics

_numerics.apply()
