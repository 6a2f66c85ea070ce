"""Auditing artifacts: ``sp2dpo audit diff OLD NEW`` (beta artifacts, paths or ``REV:path``) and
``sp2dpo verify [REV]`` (re-run a commit's pipeline from its code and compare every output:
:func:`sp2dpo.audit.verify.verify`; float noise told from a real change by
:mod:`sp2dpo.audit.tolerance`)."""

from sp2dpo.audit.compare import (
    DEFAULT_COLUMN,
    DEFAULT_THRESHOLD,
    AuditError,
    Side,
    default_category_column,
    diff,
    load_pairs,
    load_side,
    panel,
    params_diff,
    render,
    side_from_bytes,
)
from sp2dpo.audit.outputs import OutputCheck, VerifyReport, compare_locks
from sp2dpo.audit.tolerance import DEFAULT_TOLERANCE, Closeness, compare_dir, compare_file
from sp2dpo.audit.verify import EXIT_REPRO_FAILED, ReproFailed, VerifyError

__all__ = [
    "DEFAULT_COLUMN",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOLERANCE",
    "EXIT_REPRO_FAILED",
    "AuditError",
    "Closeness",
    "OutputCheck",
    "ReproFailed",
    "Side",
    "VerifyError",
    "VerifyReport",
    "compare_dir",
    "compare_file",
    "compare_locks",
    "default_category_column",
    "diff",
    "load_pairs",
    "load_side",
    "panel",
    "params_diff",
    "render",
    "side_from_bytes",
]
