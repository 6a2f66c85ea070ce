"""Shared fixtures: offline environment, the shipped data sample, a throwaway project copy;
bounded subprocesses; capability markers (``requires_chromium``, ``requires_npm``)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sp2dpo  # noqa: F401  (pins the CPU numerics for the suite and every subprocess it starts)
from sp2dpo.sweep.queue import cpu_threads

# Under ``pytest -n N`` (an xdist worker): each worker gets its share of the CPU cores, as the
# sweep's DVC queue workers do (``OMP_NUM_THREADS``, unless set), for its own torch and every
# process it starts (DVC's stages, a trainer, a server). Otherwise each of the N workers' torch
# takes every core, and the threads of N processes spinning on the same cores slow all of them
# down (the pinned numerics give the same bytes with any thread count). Before anything imports
# torch (neither import above does).
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if _XDIST_WORKERS > 1:
    cpu_threads(os.environ, _XDIST_WORKERS)

ROOT = Path(__file__).resolve().parents[1]

# Offline by default, like CI: the Hub is unreachable here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: The 500-row HuggingFaceH4/ultrafeedback_binarized train_prefs sample tracked by data.dvc.
H4_SAMPLE = ROOT / "data" / "raw" / "uf_binarized_h4_train_prefs_500.jsonl.gz"
#: AlpacaEval 2.0 and IFEval files tracked by evalsets.dvc (docs/data.md).
EVALSETS = ROOT / "data" / "evalsets"


def tool_env() -> dict[str, str]:
    """Environment for subprocesses: the venv's bin first on PATH (DVC stages run `python`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


#: Default limit (s) of one command started by :func:`run`; pass ``timeout=`` for longer ones.
RUN_TIMEOUT = 600


def _own_group(proc: subprocess.Popen) -> int | None:
    """``proc``'s process group when it leads one (``start_new_session=True``), else None.
    Ask before ``proc`` is reaped: afterwards its pid may belong to another process."""
    if proc.returncode is not None:
        return None
    try:
        return proc.pid if os.getpgid(proc.pid) == proc.pid else None
    except ProcessLookupError:
        return None


def _kill(proc: subprocess.Popen, group: int | None) -> None:
    """SIGKILL ``proc``, and every process of ``group`` when given, so that grandchildren
    (DVC's stage commands, a server's workers) do not outlive it."""
    if group is None:
        proc.kill()  # a no-op once proc is reaped
        return
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run(
    cmd: list[str], cwd: Path, check: bool = True, timeout: float = RUN_TIMEOUT, **kwargs
) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; on failure show it in the assertion.

    The command runs in its own session; when it outlives ``timeout`` seconds (or the test is
    interrupted), it and everything it started are killed and the assertion shows its output.
    """
    env = kwargs.pop("env", tool_env())
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    ) as proc:
        group = _own_group(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc, group)
            stdout, stderr = proc.communicate(timeout=30)
            raise AssertionError(
                f"{' '.join(cmd)} timed out after {timeout} s:\n{stdout}\n{stderr}"
            ) from None
        except BaseException:  # pytest-timeout, Ctrl-C: leave nothing running
            _kill(proc, group)
            raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{stdout}\n{stderr}")
    return result


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Terminate a process started by a test; kill it (and its process group, when it leads
    one) if it does not exit in ``timeout`` s. Never waits longer than ``2 * timeout``."""
    group = _own_group(proc)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc, group)
            proc.wait(timeout=timeout)
    if group is not None:
        _kill(proc, group)  # workers the process left behind


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------ capabilities

#: Set to 1 (CI: ``.ci/run``) to fail, not skip, a test whose capability is missing.
REQUIRE_CAPABILITIES = "SP2DPO_REQUIRE_CAPABILITIES"


#: Chromium flags every browser test uses: headless, and nothing that phones home (the network
#: is closed here). Each test adds its host-resolver rule and window/timing flags.
CHROMIUM_BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium() -> str | None:
    """Chromium or Chrome: ``$CHROME_BIN``, else the usual command names on PATH."""
    if os.environ.get("CHROME_BIN"):
        return os.environ["CHROME_BIN"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def _runs(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _chromium_missing() -> str | None:
    chromium = find_chromium()
    if chromium is None or shutil.which(chromium) is None:
        return "Chromium not installed: run `make browser` (or set CHROME_BIN)"
    if not _runs([chromium, "--version"]):
        return f"Chromium at {chromium} does not run (`--version` fails): run `make browser`"
    return None


def _npm_missing() -> str | None:
    npm = shutil.which("npm")
    if npm is None:
        return "npm not installed: run `make node_modules/.package-lock.json` (Node.js + `npm ci`)"
    if not _runs([npm, "--version"]):
        return f"npm at {npm} does not run (`--version` fails): reinstall Node.js and npm"
    return None


#: Marker -> (capability name, check returning why it is missing, or None).
CAPABILITIES = {
    "requires_chromium": ("chromium", _chromium_missing),
    "requires_npm": ("npm", _npm_missing),
}


@functools.cache
def missing_capability(marker: str) -> str | None:
    """Why the capability of ``marker`` is missing, or None; checked once per session."""
    return CAPABILITIES[marker][1]()


def require_capabilities() -> bool:
    """Whether a missing capability fails the test (``SP2DPO_REQUIRE_CAPABILITIES=1``)."""
    return os.environ.get(REQUIRE_CAPABILITIES, "") == "1"


#: Tests skipped or failed for a missing capability, by capability name.
_LACKING: dict[str, set[str]] = {}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test whose capability is missing (fail it with ``SP2DPO_REQUIRE_CAPABILITIES=1``)."""
    for marker, (name, _) in CAPABILITIES.items():
        if item.get_closest_marker(marker) is None:
            continue
        why = missing_capability(marker)
        if why is None:
            continue
        _LACKING.setdefault(name, set()).add(item.nodeid)
        item.user_properties.append(("missing_capability", name))  # for the xdist controller
        if require_capabilities():
            pytest.fail(
                f"{why} ({REQUIRE_CAPABILITIES}=1: a missing capability fails)", pytrace=False
            )
        pytest.skip(f"SKIPPED: {why}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under ``pytest -n`` the setup above runs in a worker: its report tells the controller."""
    for key, name in report.user_properties:
        if key == "missing_capability":
            _LACKING.setdefault(name, set()).add(report.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One line naming the missing capabilities, and how many tests they kept from running."""
    if _LACKING:
        parts = [
            f"{name} ({len(ids)} test{'s' * (len(ids) > 1)})" for name, ids in _LACKING.items()
        ]
        verdict = "FAILED" if require_capabilities() else "SKIPPED"
        terminalreporter.write_line(
            f"MISSING CAPABILITIES: {', '.join(parts)}; those tests {verdict}", red=True, bold=True
        )


# ------------------------------------------------------------------ parallel runs (pytest -n)

#: Test files that run commands in the workspace itself (``cwd=ROOT`` or ``chdir(ROOT)``: the
#: CLI, a nested pytest of the suite, a stage that writes its run log under ``logs/``). Under
#: ``pytest -n 2 --dist loadgroup`` (pytest-xdist, ``make test``) they form one group, run by one
#: worker one after another, with tests/test_rehearse.py, whose rehearsal requires the workspace
#: (``git status --ignored``, ``mlflow.db``) to be unchanged while it runs. A new test file that
#: runs something with ``cwd=ROOT`` belongs here.
WORKSPACE_FILES = frozenset(
    {
        "tests/test_rehearse.py",
        "tests/test_rehearse_inputs.py",
        "tests/test_core_entry.py",
        "tests/test_numerics.py",
        "tests/test_report_plots_html.py",
        "tests/test_evaluate_stage_stop.py",
        "tests/test_evaluate_mtbench.py",
        "tests/test_evaluate_arenahard.py",
        "tests/test_evaluate_prefeval.py",
        "tests/test_evaluate_suites.py",
        "tests/test_evaluate_judge_keys.py",
        "tests/test_evaluate_suite_protocol.py",
    }
)

#: The tests of the session fixture ``serve`` (a real ``transformers serve``): one group, so the
#: run starts one server, not one per worker. A new test of ``serve`` belongs here.
SERVE_TESTS = (
    "tests/test_annotate_serve.py::",
    "tests/test_evaluate_judge.py::test_judge_through_transformers_serve",
)

#: The longest tests, longest first: under ``pytest -n`` they are handed out before everything
#: else, so that no worker starts one of them last while the other sits idle. The workspace
#: group goes where its longest test (the rehearsal) is.
LONGEST = (
    "tests/integration/test_full_pipeline.py::",  # the whole DAG, `dvc exp run`, `sp2dpo verify`
    "tests/test_rehearse.py::test_rehearsal_",  # the paper's 29 stages, twice
    "tests/integration/test_reproduce.py::test_readme_run_command",  # `make run`
    "tests/integration/test_sweep_dvc.py::",  # four experiments on two DVC queue workers
    "tests/integration/test_queue_dvc.py::",
    "tests/integration/test_train_multiprocess.py::",
    "tests/test_train_smoke.py::",
)


def _group(nodeid: str) -> str | None:
    """The xdist group of a test (``None``: a unit of its own)."""
    if nodeid.split("::", 1)[0] in WORKSPACE_FILES:
        return "workspace"
    if nodeid.startswith(SERVE_TESTS):
        return "serve"
    return None


def _rank(nodeid: str) -> int:
    return next((i for i, prefix in enumerate(LONGEST) if nodeid.startswith(prefix)), len(LONGEST))


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup`` with the groups above. (pytest-xdist's own ``xdist_group`` marker
    does not group under pytest 9.2: it renames ``item._nodeid``, which pytest 9 no longer
    reads; the controller groups by node id here instead, which needs neither.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Scheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid) or super()._split_scope(nodeid)

        def _reschedule(self, node) -> None:
            # One unit queued behind the running test, not xdist's two: a unit queued behind a
            # long test waits for it while the other worker may run out of work. (A worker
            # runs a test once it knows the next one, so one must stay queued.)
            if self.workqueue and self._pending_of(self.assigned_work[node]) > 1:
                return
            super()._reschedule(node)

    return Scheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n`` (in each worker, alike): the longest tests first, a group where its
    longest test is (and before the single tests of that rank: it is one long unit of work).
    Serial runs keep the collection order."""
    if not hasattr(config, "workerinput"):  # not an xdist worker
        return
    rank: dict[str, tuple[int, int]] = {}
    for item in items:
        group = _group(item.nodeid)
        # a group (many tests, one worker) before the single tests of its rank
        mine = (_rank(item.nodeid), 0 if group else 1)
        rank[group or item.nodeid] = min(rank.get(group or item.nodeid, mine), mine)
    # sorted() is stable: within a rank the collection order stays.
    items[:] = sorted(items, key=lambda i: rank[_group(i.nodeid) or i.nodeid])


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``pytest -n``, compile the project's modules before any test (in the controller):
    a worker's first import of a module then never makes a new ``__pycache__`` folder appear in
    the workspace while the rehearsal test watches it."""
    if hasattr(session.config, "workerinput") or not getattr(session.config.option, "numprocesses", None):
        return
    import compileall

    for folder in ("src", "tests", "stages", "benchmarks"):
        compileall.compile_dir(str(ROOT / folder), quiet=1)


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def h4_sample() -> Path:
    """Path of the shipped H4 sample, pulled from the bundled DVC remote when missing."""
    if not H4_SAMPLE.exists():
        run([str(Path(sys.executable).parent / "dvc"), "pull", "-q", "data.dvc"], cwd=ROOT)
    assert H4_SAMPLE.exists(), "dvc pull data.dvc did not restore the sample"
    return H4_SAMPLE


@pytest.fixture(scope="session")
def evalsets() -> Path:
    """The shipped evaluation files (``data/evalsets``), pulled from the bundled remote when missing.

    Layout: ``alpaca_eval/gpt4_1106_preview.json.gz`` (reference outputs),
    ``alpaca_eval/annotations/<model>.weighted_alpaca_eval_gpt4_turbo.annotations.json.gz``,
    ``alpaca_eval/leaderboard/*.csv``, ``ifeval/input_data.jsonl.gz``.
    """
    marker = EVALSETS / "alpaca_eval" / "gpt4_1106_preview.json.gz"
    if not marker.exists():
        run([str(Path(sys.executable).parent / "dvc"), "pull", "-q", "evalsets.dvc"], cwd=ROOT)
    assert marker.exists(), "dvc pull evalsets.dvc did not restore data/evalsets"
    return EVALSETS


def annotate_file(
    params: str | Path,
    pairs: str | Path,
    out: str | Path,
    *,
    log: str | Path | None = None,
    report: str | Path | None = None,
    estimate: bool = False,
    prompts_root: str | Path = ROOT,
    run_log: str | Path | None = None,
) -> dict:
    """The annotate stage on files: what `sp2dpo annotate --params P --pairs X --out Y` runs."""
    from sp2dpo import annotate
    from sp2dpo.core import config

    p = config.load(params, sections=["teachers", "prompts", "decoding", "annotate"])
    paths = annotate.AnnotatePaths(
        pairs=Path(pairs), out=Path(out), log=Path(log) if log else None,
        report=Path(report) if report else None, prompts_root=Path(prompts_root),
        run_log=Path(run_log) if run_log else None,
    )
    return annotate.run(p.teachers, p.prompts, p.decoding, p.annotate, paths, estimate_only=estimate)


def compose_params(tmp_path: Path, overrides: list[str]):
    """params.yaml composed with Hydra overrides exactly as `dvc exp run -S ...` composes it
    (``+profiles=NAME`` selects a profile), written to ``tmp_path`` and loaded."""
    from dvc.utils.hydra import compose_and_dump

    from sp2dpo.core import config

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(ROOT), None, "params", str(tmp_path / "no-plugins"), overrides)
    return config.load(out)


def copy_project(dest: Path) -> Path:
    """Copy the working tree (tracked and untracked, not ignored files) into a fresh git repo.

    This is what a fresh clone of the current state looks like, so DVC behaviour (repro, no-op
    re-runs, `dvc exp run`) can be tested without touching the developer's workspace.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True, timeout=120,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.is_file():
            continue  # deleted in the working tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    run(["git", "init", "-q", "-b", "main"], cwd=dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], cwd=dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot"], cwd=dest)
    return dest


#: The real student the offline default trains (SmolLM2-135M-Instruct from PyPI).
STUDENT = "local:smollm2-135m-instruct"
#: A chat template without SmolLM2's default system turn: short sequences keep CPU tests fast.
SHORT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    """A tiny random-weight model of SmolLM2's architecture with its real tokenizer (a model
    folder): trainer tests run the same code paths in a fraction of a second per step."""
    from sp2dpo.llm import models

    return models.build_tiny_model(STUDENT, tmp_path_factory.mktemp("tiny-smollm2"), seed=0)


@contextlib.contextmanager
def transformers_serve(folder: str | Path, log_path: Path, *extra: str,
                       timeout: float = 180) -> Iterator[str]:
    """A real `transformers serve` of the model ``folder`` on a free loopback port, until the
    block ends (then stopped with its process group); yields the ``.../v1`` base URL.

    ``extra``: more `transformers serve` flags (e.g. ``--dtype float32``). Fails the test with
    the log's tail when the server does not answer ``/health`` within ``timeout`` seconds.
    """
    import requests

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    transformers = Path(sys.executable).parent / "transformers"
    cmd = [str(transformers), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                        break
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text()[-2000:]
                    pytest.fail(f"transformers serve did not start:\n{tail}")
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            stop_process(proc)


@pytest.fixture(scope="session")
def serve(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """A `transformers serve` on loopback pinned to the packaged SmolLM2 folder, shared by the
    session (it is stateless: tests only send requests); always shut down.

    Yields:
        ``(base_url, folder)``: the OpenAI-compatible ``.../v1`` URL and the served model folder.
    """
    from sp2dpo.llm import models

    folder = models.ensure_converted("smollm2-135m-instruct")
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with transformers_serve(folder, log_path, timeout=120) as base_url:
        yield base_url, str(folder)


#: Six preference pairs with distinct replies (trainer tests).
PAIRS = [
    ("p0", "Name a primary colour.", "Red is a primary colour.", "Grass."),
    ("p1", "What is 2 + 2?", "2 + 2 = 4.", "It is 5, probably."),
    ("p2", "Say hello in French.", "Bonjour !", "Hola."),
    ("p3", "Is the sun a star?", "Yes, the Sun is a star.", "No, it is a planet."),
    ("p4", "Give an even number.", "Eight.", "Seven is even."),
    ("p5", "Capital of Italy?", "Rome.", "Milan is the capital."),
]
#: Two more, for tests that need eight.
MORE_PAIRS = [
    ("p6", "Largest ocean?", "The Pacific.", "The Atlantic, by far."),
    ("p7", "Opposite of hot?", "Cold.", "Warm, I think."),
]


def pairs_frame(n: int = len(PAIRS)):
    """The pairs as a filtered-pairs table (with UltraFeedback-style scores)."""
    import pandas as pd

    rows = PAIRS[:n]
    return pd.DataFrame(
        {
            "prompt_id": [p[0] for p in rows],
            "prompt": [p[1] for p in rows],
            "chosen": [p[2] for p in rows],
            "rejected": [p[3] for p in rows],
            "score_chosen": [8.0, 7.0, 9.0, 6.0, 8.5, 7.5][:n],
            "score_rejected": [3.0, 2.0, 4.0, 5.0, 1.0, 6.0][:n],
            "source": ["test"] * n,
        }
    )
