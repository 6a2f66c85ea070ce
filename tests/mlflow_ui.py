"""The MLflow UI in headless Chromium, for tests: a real ``mlflow server`` on loopback, and the
runs table of an experiment as the UI renders it (parent runs expanded by clicking their
expander, as a user would).

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (NUL-separated JSON
on file descriptors 3 and 4): no websocket client, no port to race for. Every host name but
127.0.0.1 is unresolvable, so nothing phones home.

Written against the MLflow 3.17 UI (``mlflow/server/js/build``); what it relies on:

* ``#/experiments/<id>?workflowType=machine_learning`` redirects to ``#/experiments/<id>/runs``.
  The workflow type (the sidebar's "GenAI" / "Model training" switch: the URL parameter, else
  the browser's localStorage, else GenAI) decides the landing tab: the
  experiment's ``mlflow.experimentKind`` tag does not (without the parameter the experiment
  opens on its GenAI "Overview" page, tag or not).
* The runs table is an ag-grid: one ``.ag-row[row-id=<run id>]`` per run and pinned part; the run
  name cell is ``[col-id="attributes.`Run Name`"]`` (a parent run has an expander button in it,
  a child run is indented under it), the datasets cell ``[col-id="attributes.`Dataset`"]`` reads
  ``<name> (<digest>) <Context>`` per logged dataset, e.g. ``pairs (92e7f518) Training``.
* Child runs are collapsed under their parent until its expander is clicked (the UI only
  expands parents of ``mlflow.runType=evaluation`` runs by itself).

Limits: the grid renders only the rows in view (the window is 2400 px tall, a row 32 px) and the
UI loads runs in pages; a test with many more runs than a few dozen should filter them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import CHROMIUM_BASE_FLAGS, free_port, stop_process, tool_env

#: Headless, nothing that phones home, every host but loopback unresolvable, a tall window (the
#: grid only renders the rows in view).
CHROMIUM_FLAGS = (
    *CHROMIUM_BASE_FLAGS,
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1600,2400",
)


# ------------------------------------------------------------------------------------ server


@contextlib.contextmanager
def mlflow_server(db_path: Path, artifacts: Path, *, timeout: float = 120) -> Iterator[str]:
    """``mlflow server`` of the sqlite store ``db_path`` on a free loopback port until the block
    ends (then stopped with its process group); yields its base URL ``http://127.0.0.1:PORT``.

    Job execution (seven huey consumers) and telemetry are off. The server's output goes to
    ``mlflow-server.log`` next to ``db_path``; its tail is shown when it does not answer
    ``/health`` within ``timeout`` seconds.
    """
    db_path, artifacts = db_path.resolve(), artifacts.resolve()
    port = free_port()
    log_path = db_path.parent / "mlflow-server.log"
    env = {
        **tool_env(),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{db_path}",
        "--default-artifact-root",
        str(artifacts),
    ]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=db_path.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"mlflow server did not come up:\n{log_path.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.5)
        yield base
    finally:
        stop_process(proc, timeout=15)


# --------------------------------------------------------------------------- DevTools protocol


class _Chromium:
    """Headless Chromium with the DevTools protocol on a pipe, attached to its one page."""

    def __init__(self, chromium: str, profile: Path):
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Above 9, so the shell's redirections onto fds 3 and 4 cannot clobber them.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        script = f'exec "$0" "$@" 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-'
        self.log = profile / "chromium.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [
                    "/bin/bash",
                    "-c",
                    script,
                    chromium,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    "--remote-debugging-pipe",
                    "about:blank",
                ],
                pass_fds=ends,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for fd in ends:
            os.close(fd)
        self._out = os.fdopen(to_chrome_w, "wb", buffering=0)
        self._in = os.fdopen(from_chrome_r, "rb", buffering=0)
        self._ids = 0
        self._waiting: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: str | None = None
        try:
            targets = self.send("Target.getTargets")["targetInfos"]
            pages = [t["targetId"] for t in targets if t["type"] == "page"]
            page = (
                pages[0]
                if pages
                else self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            )
            attached = self.send("Target.attachToTarget", {"targetId": page, "flatten": True})
            self.session = attached["sessionId"]
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        buffer = b""
        while chunk := self._in.read(1 << 16):
            *messages, buffer = (buffer + chunk).split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._lock:
                    waiting = self._waiting.get(message.get("id", -1))
                if waiting is not None:
                    waiting.put(message)  # events (no "id") are not used

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        """One DevTools command (on the page once attached); its result."""
        with self._lock:
            self._ids += 1
            ident = self._ids
            reply: queue.Queue = queue.Queue()
            self._waiting[ident] = reply
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        try:
            self._out.write(json.dumps(message).encode() + b"\0")
            answer = reply.get(timeout=timeout)
        except (queue.Empty, BrokenPipeError):
            raise AssertionError(f"Chromium did not answer {method} ({self._log_tail()})") from None
        finally:
            with self._lock:
                self._waiting.pop(ident, None)
        if "error" in answer:
            raise AssertionError(f"{method} failed: {answer['error']}")
        return answer["result"]

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def close(self) -> None:
        self.session = None
        with contextlib.suppress(AssertionError):
            self.send("Browser.close", timeout=5)
        stop_process(self.proc, timeout=10)
        self._reader.join(timeout=5)
        self._out.close()
        if not self._reader.is_alive():
            self._in.close()


# ---------------------------------------------------------------------------------- runs table

#: Rows of the runs table, top to bottom, as JSON: the parts of one run (pinned columns, scrolled
#: columns) share a row-id.
_ROWS_JS = r"""
(() => {
  const runs = new Map();
  for (const part of document.querySelectorAll('.ag-row[row-id]')) {
    const id = part.getAttribute('row-id');
    if (!runs.has(id)) runs.set(id, {index: +part.getAttribute('row-index'), parts: []});
    runs.get(id).parts.push(part);
  }
  const cell = (parts, col) => parts.map((p) => p.querySelector(`[col-id="${col}"]`)).find(Boolean);
  const text = (el) => (el ? el.innerText : '').replace(/\s+/g, ' ').trim();
  return JSON.stringify([...runs].sort((a, b) => a[1].index - b[1].index).map(([id, run]) => {
    const name = cell(run.parts, 'attributes.`Run Name`');
    const link = name && name.querySelector('a[href*="/runs/"]');
    return {
      run_id: id,
      name: text(link),
      indent: link ? link.getBoundingClientRect().left - name.getBoundingClientRect().left : -1,
      expandable: Boolean(name && name.querySelector('button')),
      datasets: text(cell(run.parts, 'attributes.`Dataset`')),
      text: run.parts.map(text).filter(Boolean).join(' | '),
    };
  }));
})()
"""

#: Clicks the expander of run ``%s``; whether there was one.
_EXPAND_JS = r"""
(() => {
  const button = document.querySelector(
    '.ag-row[row-id="%s"] [col-id="attributes.`Run Name`"] button');
  if (button) button.click();
  return Boolean(button);
})()
"""


def _shown(rows: list[dict]) -> list[tuple]:
    """What identifies the table's state (the row texts also hold "N seconds ago", which ages)."""
    return [(r["run_id"], r["name"], r["indent"], r["expandable"], r["datasets"]) for r in rows]


def _wait_for_rows(
    browser: _Chromium, before: list[tuple] | None, deadline: float, timeout: float
) -> list[dict]:
    """The table's rows once they show, differ from ``before`` (the state before a click; None at
    first) and held still for a second. After a click that changes nothing: the rows after 5 s
    still. At ``deadline``: the rows as they are after a click, else an AssertionError naming the
    page's address and text (no runs table: the UI opened another page, or the runs are missing).
    """
    last, since = None, time.monotonic()
    while True:
        rows = json.loads(browser.evaluate(_ROWS_JS))
        if _shown(rows) != last:
            last, since = _shown(rows), time.monotonic()
        held = time.monotonic() - since
        if (rows and last != before and held >= 1) or (before is not None and held >= 5):
            return rows
        if time.monotonic() > deadline:
            if before is not None:
                return rows
            where = browser.evaluate("location.href")
            text = browser.evaluate("document.body.innerText")
            raise AssertionError(
                f"no runs table at {where} in {timeout} s; the page shows:\n{text[:3000]}"
            )
        time.sleep(0.25)


@dataclass(frozen=True)
class RunRow:
    """One run as the runs table shows it."""

    run_id: str
    name: str
    #: Pixels from the run name cell's edge to the run name: a child is indented under its parent.
    indent: float
    #: Whether the row has an expander (the run has child runs).
    expandable: bool
    #: The Dataset cell, e.g. ``"pairs (92e7f518) Training , beta (36c3a797) Training …"``; ``"-"``
    #: when the run logged none.
    datasets: str
    #: The whole row's text (pinned | scrolled columns).
    text: str


@dataclass(frozen=True)
class RunsTable:
    """The runs table of an experiment page after the UI loaded it."""

    #: The page's address after the UI's redirects (``.../#/experiments/<id>/runs?...``).
    url: str
    rows: list[RunRow]
    #: The whole page's text (``document.body.innerText``): header, tabs, "N matching runs", ....
    page_text: str

    def row(self, name: str) -> RunRow:
        """The row of the run named ``name`` (exactly one)."""
        found = [row for row in self.rows if row.name == name]
        assert len(found) == 1, f"{len(found)} rows named {name!r} in {[r.name for r in self.rows]}"
        return found[0]

    def children(self, name: str) -> list[RunRow]:
        """The rows shown nested under the run ``name``: those right below it, indented more."""
        start = self.rows.index(self.row(name))
        parent = self.rows[start].indent
        nested = []
        for row in self.rows[start + 1 :]:
            if row.indent <= parent:
                break
            nested.append(row)
        return nested


def render_runs_table(
    chromium: str,
    base_url: str,
    experiment_id: str,
    *,
    expand_parents: bool = True,
    timeout: float = 120,
) -> RunsTable:
    """Open experiment ``experiment_id`` of the MLflow server at ``base_url`` in headless Chromium
    (as a "Model training" experiment), wait until its runs table shows rows, click every parent
    run's expander (also those revealed by expanding) when ``expand_parents``, and read the table.

    A step is done when the rows stay the same for a second. Fails, naming the page's address
    and text, when no runs table shows within ``timeout`` seconds (e.g. the UI opened another page).
    """
    url = f"{base_url}/#/experiments/{experiment_id}?workflowType=machine_learning"
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="sp2dpo-chromium-") as profile:
        browser = _Chromium(chromium, Path(profile))
        try:
            navigated = browser.send("Page.navigate", {"url": url})
            assert not navigated.get("errorText"), f"{url}: {navigated['errorText']}"

            rows = _wait_for_rows(browser, None, deadline, timeout)
            clicked: set[str] = set()
            while expand_parents:
                todo = [r["run_id"] for r in rows if r["expandable"] and r["run_id"] not in clicked]
                if not todo:
                    break
                for run_id in todo:
                    assert browser.evaluate(_EXPAND_JS % run_id), f"no expander on run {run_id}"
                clicked.update(todo)
                rows = _wait_for_rows(browser, _shown(rows), deadline, timeout)
            return RunsTable(
                url=browser.evaluate("location.href"),
                rows=[RunRow(**r) for r in rows],
                page_text=browser.evaluate("document.body.innerText"),
            )
        finally:
            browser.close()
