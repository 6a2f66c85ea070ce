"""Tests for sp2dpo.core.entry, jsonio (strict JSON, the JSON Lines reader) and programs: what
every command shares when input is bad.

No traceback reaches a user: expected errors are one line with status 2, OS errors on a named
path too, a bug is one line with status 70 (its traceback with -v), and a reader that goes away
(`sp2dpo ... | head`) ends the command quietly with status 141.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sp2dpo.core import entry, jsonio, programs
from sp2dpo.core.errors import UserError
from tests.conftest import ROOT


def _raise(exc: BaseException):
    def fn():
        raise exc
    return fn


def test_a_bug_is_one_line_with_status_70_and_its_traceback_with_verbose(capsys):
    assert entry.guarded(_raise(RuntimeError("boom"))) == entry.EXIT_BUG == 70
    err = capsys.readouterr().err
    assert err == "sp2dpo: internal error: RuntimeError: boom (a bug; run with -v for the traceback)\n"
    assert entry.guarded(_raise(KeyError("k")), verbose=True) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("the traceback is above)")


def test_an_os_error_on_a_path_is_one_line_naming_it(tmp_path, capsys):
    assert entry.guarded(lambda: open(tmp_path)) == 2
    assert capsys.readouterr().err == f"sp2dpo: error: {tmp_path}: Is a directory\n"
    assert entry.guarded(lambda: (tmp_path / "a").rename(tmp_path / "no" / "b")) == 2
    assert capsys.readouterr().err == (
        f"sp2dpo: error: {tmp_path / 'a'} -> {tmp_path / 'no' / 'b'}: No such file or directory\n")
    assert entry.guarded(lambda: 3) == 3 and entry.guarded(lambda: True) == 0


def test_a_closed_pipe_ends_the_command_quietly_with_status_141():
    """`sp2dpo params docs | head -1`: the reader leaves after one line; before, Python printed a
    BrokenPipeError traceback (or 'Exception ignored ... BrokenPipeError' at exit)."""
    proc = subprocess.Popen([sys.executable, "-m", "sp2dpo.cli", "params", "docs"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes (its imports take a second)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == entry.EXIT_BROKEN_PIPE == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
    whole = subprocess.run([sys.executable, "-m", "sp2dpo.cli", "params", "docs"], cwd=ROOT,
                           capture_output=True, timeout=120)
    assert whole.returncode == 0 and whole.stdout.startswith(b"#")


def test_strict_json_refuses_a_key_given_twice():
    assert jsonio.loads('{"a": {"b": 1}, "c": [{"b": 2}]}') == {"a": {"b": 1}, "c": [{"b": 2}]}
    with pytest.raises(json.JSONDecodeError, match="duplicate key 'b'"):
        jsonio.loads('{"a": {"b": 1, "b": 2}}')
    assert json.loads('{"b": 1, "b": 2}') == {"b": 2}  # what the standard library does instead


@pytest.mark.parametrize("name", ["r.jsonl", "r.JSONL.GZ"])
def test_the_jsonl_reader_names_file_and_line_in_every_error(tmp_path, name):
    """One reader for every stage: gzip by suffix, blank lines skipped, strict JSON, and each
    failure the caller's own error class with ``FILE:LINE`` (or how far a cut file was read)."""
    import gzip

    class Mine(jsonio.JsonlError):
        pass

    def write(text: str):
        path = tmp_path / name
        path.write_bytes(gzip.compress(text.encode()) if name.endswith("GZ") else text.encode())
        return path

    path = write('{"a": 1}\n\n{"a": 2}\n')
    assert list(jsonio.iter_jsonl(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:3", {"a": 2})]
    for text, message in [
        ('{"a": 1}\n{"a": 1, "a": 2}\n', ":2: invalid JSON: duplicate key 'a'"),
        ('{"a": 1}\n{oops\n', ":2: invalid JSON: Expecting property name"),
        ("\n[1]\n", ":2: expected a JSON object, got list"),
        ("\n", ": no records"),
    ]:
        with pytest.raises(Mine) as info:
            list(jsonio.iter_jsonl(write(text), error=Mine))
        assert str(info.value).startswith(f"{path}{message}")
    assert list(jsonio.iter_jsonl(write("\n"), allow_empty=True)) == []
    if name.endswith("GZ"):
        whole = gzip.compress(('{"a": 1}\n' * 5000).encode())
        path.write_bytes(whole[: len(whole) // 2])
        with pytest.raises(jsonio.JsonlError, match=r": cannot read: truncated or corrupt gzip data after line \d+ "):
            list(jsonio.iter_jsonl(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(jsonio.iter_jsonl(tmp_path / "missing.jsonl"))


def test_dvc_is_found_beside_the_interpreter_without_path(monkeypatch):
    """`.venv/bin/python -m sp2dpo.cli sweep select` with the venv not on PATH failed with
    "No such file or directory: 'dvc'"."""
    monkeypatch.setenv("PATH", "/nonexistent")
    found = programs.dvc_executable()
    assert found.startswith(str(ROOT / ".venv")) or found.startswith(sys.prefix)
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip()[0].isdigit()
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(programs.MissingProgram, match="dvc is not installed"):
        programs.dvc_executable()


def test_the_program_runner_names_the_command_the_folder_and_the_output_tail(tmp_path, monkeypatch):
    """One runner for git and DVC: the caller's error class, the command as typed, the folder,
    the last lines of stderr; a timeout and a missing program are the same one-line error."""

    class Mine(UserError):
        pass

    script = "import sys; print('out'); sys.stderr.write('a\\nb\\n\\nc\\n'); sys.exit(3)"
    with pytest.raises(Mine) as info:
        programs.run([sys.executable, "-c", script], cwd=tmp_path, error=Mine)
    name = Path(sys.executable).name
    assert str(info.value) == f"`{name} -c {script}` failed (exit 3, in {tmp_path}): a | b | c"
    done = programs.run([sys.executable, "-c", script], cwd=tmp_path, check=False, text=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"a\nb\n\nc\n")
    with pytest.raises(programs.ProgramError, match=r"^`\S+ -c import time; time.sleep\(5\)` did not finish in 0 s"):
        programs.run([sys.executable, "-c", "import time; time.sleep(5)"], cwd=tmp_path, timeout=0.2)
    with pytest.raises(programs.ProgramError, match=r"^`no-such-program x` cannot be started in "):
        programs.run(["no-such-program", "x"], cwd=tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=60)
    monkeypatch.setenv("GIT_DIR", str(ROOT / ".git"))  # as inside a hook: not the repository at cwd
    top = programs.git("rev-parse", "--show-toplevel", cwd=tmp_path).stdout.strip()
    assert Path(top).resolve() == tmp_path.resolve()
