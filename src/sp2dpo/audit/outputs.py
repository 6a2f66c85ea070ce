"""The outputs a ``dvc.lock`` records, two versions of them, and what differs between them.

:func:`compare_locks` pairs every output of a revision's lock with the re-run's by md5 (a
directory by its ``.dir`` md5); :class:`Versions` reads the revision's copy of an output (from
git for ``cache: false`` outputs, else from the DVC cache by md5; a directory through its ``.dir``
object) and the re-run's (the clone's workspace); :func:`describe_output` says in one line what
differs (:mod:`sp2dpo.audit.describe`); :func:`render` prints the verdict of ``sp2dpo verify``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sp2dpo.audit import describe, tolerance
from sp2dpo.audit.compare import git_show

IDENTICAL, EQUIVALENT, DIFFERS = "identical", "equivalent", "differs"


@dataclasses.dataclass
class OutputCheck:
    """One output: its md5 in the revision's lock and in the re-run's, and what differs."""

    path: str
    stage: str | None
    status: str  # IDENTICAL, EQUIVALENT or DIFFERS
    detail: str = ""
    expected_md5: str | None = None
    actual_md5: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class VerifyReport:
    """The verdict on one revision: every output's check, sorted by path."""

    rev: str  # the full commit hash
    outputs: list[OutputCheck]
    unavailable: list[str] = dataclasses.field(default_factory=list)  # REV copies nowhere to fetch
    workdir: Path | None = None  # the kept work folder (None: removed)

    tolerance: float = tolerance.DEFAULT_TOLERANCE  # relative, for EQUIVALENT

    @property
    def identical(self) -> bool:
        return all(o.status == IDENTICAL for o in self.outputs)

    @property
    def verdict(self) -> str:
        """IDENTICAL when every output is; else DIFFERS when any output does; else EQUIVALENT."""
        statuses = {o.status for o in self.outputs}
        return DIFFERS if DIFFERS in statuses else EQUIVALENT if EQUIVALENT in statuses else IDENTICAL


def lock_outputs(lock: Mapping[str, Any] | None) -> dict[str, dict[str, str | None]]:
    """``{stage: {out path: md5}}`` of a parsed ``dvc.lock`` (every stage's ``outs``, metrics,
    plots and ``cache: false`` files included: the lock lists them all under ``outs``)."""
    stages = (lock or {}).get("stages") or {}
    return {
        str(name): {
            str(o["path"]): o.get("md5")
            for o in (entry or {}).get("outs") or []
            if isinstance(o, dict) and "path" in o
        }
        for name, entry in stages.items()
    }


def compare_locks(expected: Mapping[str, Any] | None, actual: Mapping[str, Any] | None) -> list[OutputCheck]:
    """Every output of either lock, sorted by path: identical when both record the same md5;
    otherwise it differs (detail empty when both md5s exist: :func:`verify` describes it)."""
    old, new = lock_outputs(expected), lock_outputs(actual)
    checks = []
    for stage in sorted(set(old) | set(new)):
        a, b = old.get(stage), new.get(stage)
        if a is None or b is None:
            outs = b if a is None else a
            detail = (f"not recorded in REV's dvc.lock (no stage {stage!r} there)" if a is None
                      else f"missing after the re-run (no stage {stage!r} in its dvc.lock)")
            checks += [OutputCheck(path, stage, DIFFERS, detail, *((None, md5) if a is None else (md5, None)))
                       for path, md5 in outs.items()]
            if not outs:
                checks.append(OutputCheck(f"(stage {stage})", stage, DIFFERS, detail))
            continue
        for path in sorted(set(a) | set(b)):
            if path not in b:
                checks.append(OutputCheck(path, stage, DIFFERS, "missing after the re-run", a[path], None))
            elif path not in a:
                checks.append(OutputCheck(path, stage, DIFFERS, "not recorded in REV's dvc.lock", None, b[path]))
            elif a[path] is not None and a[path] == b[path]:
                checks.append(OutputCheck(path, stage, IDENTICAL, "", a[path], b[path]))
            else:
                detail = "" if a[path] and b[path] else "no md5 recorded"
                checks.append(OutputCheck(path, stage, DIFFERS, detail, a[path], b[path]))
    return sorted(checks, key=lambda c: (c.path, c.stage or ""))


@dataclasses.dataclass(frozen=True)
class Versions:
    """Where REV's and the re-run's copies of the outputs are."""

    clone: Path
    commit: str
    cache: Path  # the DVC cache the clone uses
    tracked: frozenset[str]  # files git tracks at REV (the cache: false outputs among them)
    env: Mapping[str, str] | None = None  # of the git commands in the clone

    def object_path(self, md5: str) -> Path | None:
        for path in (self.cache / "files" / "md5" / md5[:2] / md5[2:], self.cache / md5[:2] / md5[2:]):
            if path.is_file():
                return path
        return None

    def rev_bytes(self, path: str, md5: str | None) -> bytes | None:
        """REV's copy of a file output (git for ``cache: false``, else the cache by md5)."""
        if path in self.tracked:
            return git_show(self.clone, self.commit, path, env=self.env)
        found = self.object_path(md5) if md5 else None
        return found.read_bytes() if found else None

    def rev_listing(self, md5: str) -> dict[str, str] | None:
        """``relpath -> md5`` of a directory output from its ``.dir`` object."""
        found = self.object_path(md5)
        if found is None:
            return None
        return {e["relpath"]: e["md5"] for e in json.loads(found.read_bytes())}

    def rev_available(self, path: str, md5: str | None) -> bool:
        if path in self.tracked or not md5:
            return True
        if not md5.endswith(".dir"):
            return self.object_path(md5) is not None
        listing = self.rev_listing(md5)
        return listing is not None and all(self.object_path(m) for m in listing.values())


def _ignored(clone: Path) -> Callable[[str], bool]:
    """What ``.dvcignore`` keeps out of a directory's hash (DVC applies it too)."""
    path = clone / ".dvcignore"
    if not path.is_file():
        return lambda rel: False
    import pathspec

    spec = pathspec.GitIgnoreSpec.from_lines(path.read_text().splitlines())
    return spec.match_file


def _md5_file(path: Path) -> str:
    """The md5 DVC records for a file."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def workspace_listing(folder: Path, clone: Path) -> dict[str, str]:
    """``relpath -> md5`` of every file under ``folder`` that DVC hashes."""
    ignored = _ignored(clone)
    return {
        p.relative_to(folder).as_posix(): _md5_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not ignored(p.relative_to(clone).as_posix())
    }


@dataclasses.dataclass(frozen=True)
class _Sides:
    """REV's and the re-run's copies of one output: a file's bytes or a directory's listings
    with readers; ``problem`` says why they cannot be read (then nothing else is set)."""

    problem: str = ""
    old: bytes | None = None
    new: bytes | None = None
    old_listing: Mapping[str, str] | None = None
    new_listing: Mapping[str, str] | None = None
    read_old: Callable[[str], bytes | None] | None = None
    read_new: Callable[[str], bytes | None] | None = None


def _sides(check: OutputCheck, versions: Versions) -> _Sides:
    target = versions.clone / check.path
    if not target.exists():
        return _Sides("missing after the re-run")
    unavailable = (
        f"md5 {check.expected_md5} -> {check.actual_md5}; REV's copy is in neither the DVC cache "
        "nor the remote, so only the hashes compare"
    )
    expected = check.expected_md5 or ""
    if expected.endswith(".dir"):
        listing = versions.rev_listing(expected)
        if listing is None or not target.is_dir():
            return _Sides(unavailable if listing is None else "a file after the re-run, a directory at REV")

        def read_old(rel: str) -> bytes | None:
            found = versions.object_path(listing[rel])
            return found.read_bytes() if found else None

        def read_new(rel: str) -> bytes | None:
            return (target / rel).read_bytes() if (target / rel).is_file() else None

        return _Sides(old_listing=listing, new_listing=workspace_listing(target, versions.clone),
                      read_old=read_old, read_new=read_new)
    old = versions.rev_bytes(check.path, expected)
    if old is None:
        return _Sides(unavailable)
    if target.is_dir():
        return _Sides("a directory after the re-run, a file at REV")
    return _Sides(old=old, new=target.read_bytes())


def _describe(path: str, sides: _Sides) -> str:
    if sides.problem:
        return sides.problem
    if sides.old_listing is not None:
        assert sides.new_listing is not None and sides.read_old and sides.read_new
        return describe.describe_dir(sides.old_listing, sides.new_listing, sides.read_old, sides.read_new)
    assert sides.old is not None and sides.new is not None
    return describe.describe_file(path, sides.old, sides.new)


def _judge(path: str, sides: _Sides, tol: float) -> tolerance.Closeness:
    if sides.problem:
        return tolerance.Closeness(False, reason=sides.problem)
    if sides.old_listing is not None:
        assert sides.new_listing is not None and sides.read_old and sides.read_new
        return tolerance.compare_dir(sides.old_listing, sides.new_listing, sides.read_old,
                                     sides.read_new, tol)
    assert sides.old is not None and sides.new is not None
    return tolerance.compare_file(path, sides.old, sides.new, tol)


def describe_output(check: OutputCheck, versions: Versions) -> str:
    """What differs between REV's copy of an output and the re-run's (one line)."""
    return _describe(check.path, _sides(check, versions))


def settle(check: OutputCheck, versions: Versions, tol: float) -> None:
    """Settle an output whose md5 differs: EQUIVALENT (detail: the largest deviation) when its
    content agrees within ``tol`` (:mod:`sp2dpo.audit.tolerance`), else DIFFERS with what
    differs and the largest deviation. Both versions are read once for the two."""
    try:
        sides = _sides(check, versions)
    except Exception as exc:  # an unreadable copy must not hide the verdict: it differs
        check.status, check.detail = DIFFERS, f"md5 {check.expected_md5} -> {check.actual_md5} (not read: {exc})"
        return
    try:
        closeness = _judge(check.path, sides, tol)
    except Exception as exc:  # a comparer bug must not hide the verdict: it differs
        closeness = tolerance.Closeness(False, reason=f"not compared ({exc})")
    if closeness.equivalent:
        check.status, check.detail = EQUIVALENT, closeness.describe()
        return
    try:
        detail = _describe(check.path, sides)
    except Exception as exc:  # a describer bug must not hide the verdict
        detail = f"md5 {check.expected_md5} -> {check.actual_md5} (not described: {exc})"
    if closeness.deviation:
        detail += f"; {closeness.describe()}"
    check.status, check.detail = DIFFERS, detail


def render(report: VerifyReport, fmt: str = "text") -> str:
    """One line per output (``identical  PATH`` / ``differs    PATH: DETAIL``), or JSON."""
    if fmt == "json":
        return json.dumps(
            {"rev": report.rev, "identical": report.identical, "verdict": report.verdict,
             "tolerance": report.tolerance, "outputs": [o.as_dict() for o in report.outputs]},
            indent=2, ensure_ascii=False,
        ) + "\n"
    lines = [
        f"{o.status:<10} {o.path}" + (f": {o.detail}" if o.status != IDENTICAL else "")
        for o in report.outputs
    ]
    return "".join(f"{line}\n" for line in lines)


def summary(report: VerifyReport) -> str:
    n = len(report.outputs)
    differ = sum(o.status == DIFFERS for o in report.outputs)
    close = sum(o.status == EQUIVALENT for o in report.outputs)
    if differ:
        return f"{report.rev[:12]}: {differ} of {n} outputs differ from the re-run" + (
            f" ({close} more equivalent within relative {report.tolerance:g})" if close else "")
    if close:
        return (f"{report.rev[:12]}: {n - close} of {n} outputs reproduced exactly, {close} "
                f"equivalent within relative {report.tolerance:g} (float noise)")
    return f"{report.rev[:12]}: all {n} outputs reproduced exactly"
