"""Reading and writing pipeline artifacts: validated at every boundary, written atomically.

Every writer goes through :func:`atomic_path`: the content is written to a temporary file in the
target's folder, flushed and fsynced, then renamed over the target, so a crash or a validation
error never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa

from sp2dpo.core.errors import InputPathError, OutputPathError, SchemaViolation

#: Table formats understood by :func:`read_table` / :func:`write_table`, by file suffix.
TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of every file written here: what ``open()`` would give (0666 minus the umask, read once
#: at import), not the 0600 of the temporary file it is renamed from.
FILE_MODE = 0o666 & ~_process_umask()


def check_input(path: str | Path) -> Path:
    """``path`` as a file to read: a missing path is ``FileNotFoundError`` (``PATH: no such
    file``), a folder an :class:`~sp2dpo.core.errors.InputPathError` (``PATH: is a folder,
    expected a file``) instead of "no such file" or an OS error later."""
    path = Path(path)
    if path.is_dir():
        raise InputPathError(f"{path}: is a folder, expected a file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def check_output(path: str | Path, *, inputs: Iterable[str | Path | None] = (), what: str = "output") -> Path:
    """Refuse an output file path that cannot be written, before any work is done.

    ``what`` names the path for the message (a flag such as ``--out``). Refused: an existing
    folder, a path under a file, and a path that is one of ``inputs`` (the same file, however
    spelled): writing there would destroy what is being read.

    Raises:
        OutputPathError: naming ``what``, the path and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path}: is a folder; give a file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{what} {path}: cannot be created, {parent} is a file")
            break
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise OutputPathError(f"{what} {path}: is the input {source}; write elsewhere")
    return path


def make_folder(path: str | Path, *, what: str) -> Path:
    """``path`` as a working folder, created if missing (``what`` names it: ``--workdir``).

    Raises:
        OutputPathError: it is a file, or it cannot be created (the OS's reason).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{what} {path}: cannot be created ({exc.strerror})") from None
    return path


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The file gets :data:`FILE_MODE`, as a plain ``open()`` would create it.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder, cannot write a file there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(f"{path}: cannot be created, a part of its folder path is a file") from None
    except PermissionError:
        raise OutputPathError(f"{path}: permission denied") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically (stable bytes for DVC metrics)."""
    write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def validate(
    frame: pd.DataFrame, schema: type[pa.DataFrameModel] | pa.DataFrameSchema, where: str
) -> pd.DataFrame:
    """Validate ``frame`` lazily against ``schema`` (a model class or a built schema).

    Raises:
        SchemaViolation: naming ``where`` (usually the file), each violated column and rule, and
            the first offending row positions with their values.
    """
    try:
        return schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        name = getattr(schema, "__name__", None) or getattr(schema, "name", None) or "the table schema"
        raise SchemaViolation(_describe_failures(exc.failure_cases, name, where)) from None


def _describe_failures(cases: pd.DataFrame, schema_name: str, where: str, first: int = 5) -> str:
    lines = [f"{where}: table does not match schema {schema_name}:"]
    for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
        rows = group["index"].dropna().tolist()
        shown = ", ".join(
            f"{int(r)} ({_short(v)})"
            for r, v in zip(rows[:first], group["failure_case"].tolist()[:first], strict=False)
        )
        more = f" and {len(rows) - first} more" if len(rows) > first else ""
        column = column if isinstance(column, str) else "<table>"
        if rows:
            lines.append(f"  - column '{column}' fails {check} at row(s) {shown}{more}")
        else:
            values = ", ".join(_short(v) for v in group["failure_case"].tolist()[:first])
            lines.append(f"  - column '{column}' fails {check}: {values}")
    return "\n".join(lines)


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def read_table(
    path: str | Path, schema: type[pa.DataFrameModel] | None = None, *, columns: list[str] | None = None
) -> pd.DataFrame:
    """Read a table by suffix (parquet, csv, jsonl, json) and validate it when ``schema`` is given."""
    path = check_input(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path, columns=columns)
    elif suffix == ".csv":
        frame = pd.read_csv(path, keep_default_na=True, usecols=columns)
    elif suffix == ".jsonl":
        frame = pd.read_json(path, lines=True, dtype=False)
    elif suffix == ".json":
        frame = pd.read_json(path, dtype=False)
    else:
        raise ValueError(
            f"{path}: unknown table type {suffix!r}; expected one of {', '.join(TABLE_SUFFIXES)}"
        )
    if columns is not None and suffix in (".jsonl", ".json"):
        frame = frame[columns]
    return validate(frame, schema, str(path)) if schema is not None else frame


def write_table(
    frame: pd.DataFrame,
    path: str | Path,
    schema: type[pa.DataFrameModel] | None = None,
    *,
    float_format: str | None = None,
) -> None:
    """Validate ``frame`` (when ``schema`` is given), then write it atomically by suffix.

    Parquet files are written without the pandas index and with a fixed row-group layout, so the
    same frame gives the same bytes; CSV uses ``float_format`` when given (stable digits).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(
            f"{path}: unknown table type {suffix!r}; expected one of {', '.join(TABLE_SUFFIXES)}"
        )
    if schema is not None:
        frame = validate(frame, schema, str(path))
    with atomic_path(path) as tmp:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")
        elif suffix == ".csv":
            frame.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")
        elif suffix == ".jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_json(tmp, orient="records", force_ascii=False, indent=2)


def save_figure(fig: Any, path: str | Path, **adjust: float) -> Path:
    """Save a matplotlib figure as PNG atomically, without the software/time metadata (stable
    bytes on re-run), and close it.

    Margins are fixed (``adjust`` -> ``subplots_adjust``) rather than computed by
    ``tight_layout``, which costs more than the drawing itself.
    """
    from matplotlib import pyplot as plt

    fig.subplots_adjust(**({"left": 0.08, "right": 0.97, "top": 0.88} | adjust))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return Path(path)
