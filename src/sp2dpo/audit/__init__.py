"""Auditing beta artifacts: ``sp2dpo audit diff OLD NEW`` (paths or ``REV:path``)."""

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
)

__all__ = [
    "DEFAULT_COLUMN",
    "DEFAULT_THRESHOLD",
    "AuditError",
    "Side",
    "default_category_column",
    "diff",
    "load_side",
    "panel",
    "params_diff",
    "render",
]
