"""Auditing artifacts: ``sp2dpo audit diff OLD NEW`` (beta artifacts, paths or ``REV:path``) and
``sp2dpo verify [REV]`` (re-run a commit's pipeline from its code and compare every output:
:func:`sp2dpo.audit.verify.verify`)."""

from sp2dpo.audit.compare import (
    DEFAULT_COLUMN,
    DEFAULT_THRESHOLD,
    AuditError,
    Side,
    default_category_column,
    diff,
    load_side,
    panel,
    params_diff,
    render,
    side_from_bytes,
)
from sp2dpo.audit.outputs import OutputCheck, VerifyReport, compare_locks
from sp2dpo.audit.verify import EXIT_REPRO_FAILED, ReproFailed, VerifyError

__all__ = [
    "DEFAULT_COLUMN",
    "DEFAULT_THRESHOLD",
    "EXIT_REPRO_FAILED",
    "AuditError",
    "OutputCheck",
    "ReproFailed",
    "Side",
    "VerifyError",
    "VerifyReport",
    "compare_locks",
    "default_category_column",
    "diff",
    "load_side",
    "panel",
    "params_diff",
    "render",
    "side_from_bytes",
]
