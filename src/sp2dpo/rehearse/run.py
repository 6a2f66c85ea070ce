"""``sp2dpo rehearse``: a configuration's whole DVC pipeline, run on this machine at real sizes with
every paid or GPU part replaced, each stage measured.

The rehearsal never touches the user's workspace. It works in a scratch folder (``--workdir``,
default a temporary folder removed afterwards) laid out as::

    repo/     a copy of the project's tracked files and input data, its own git and DVC repository
              (own DVC cache, own MLflow store, own call stores); the composed params.yaml
    repo/rehearse-inputs/   the generated inputs (git-ignored): the UltraFeedback-sized snapshot
              and the tiny students
    remote/   the DVC remote ``dvc push`` is timed against
    clone/    a fresh git clone of repo/ that ``dvc pull`` is timed into
    logs/     one log per stage and DVC command

What replaces what (:func:`rehearsal_params` writes it into params.yaml):

- the dataset: a snapshot of UltraFeedback's size (61,135 rows x ``scale``) resampled from the
  real rows the project ships, every prompt unique (:mod:`sp2dpo.rehearse.snapshot`), through the
  configuration's own filter;
- every teacher and the judge: loopback OpenAI-compatible servers (:mod:`sp2dpo.rehearse.servers`)
  with a heavy-tailed latency and a small rate of 429, 5xx, timeouts and (teachers) invalid JSON,
  called at the configuration's concurrency; rpm/tpm limits are lifted (the projection in
  docs/scaling.md applies the real ones), timeouts and backoffs shortened as the latency is;
- the students: tiny random-weight models of each student's architecture (Qwen3, Gemma 3,
  Mistral, Llama by the model id) with one small tokenizer (:mod:`sp2dpo.rehearse.students`), the
  configuration's LoRA, lengths and gradient accumulation, fp32 and a CPU optimizer; each run
  bounded to ``train_pairs`` pairs (``train.limit``, default 16; 0 = every pair), one pair per
  device batch and ``max_steps`` optimizer steps (default 2: the first step of a warm-up has
  learning rate 0, and with one step every method's adapter would be the same bytes, which eval
  then answers once): at length 2048 a CPU pays about
  0.1 s per pair for the reference precompute and about a second per pair for a step even with a
  tiny model (attention and TRL's chunked log-probs), the GPU's work, projected in docs/scaling.md;
- the answers: a loopback student server (``eval.server.base_url``); every suite at its full size
  x ``scale`` (805 AlpacaEval, 80 MT-Bench, 541 IFEval, 500 Arena-Hard, 500 held-out pairs).

Running twice in the same ``--workdir`` re-uses every stored call and output: the second
rehearsal sends no request (``servers`` in the result counts them).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sp2dpo.core import programs
from sp2dpo.core.errors import UserError
from sp2dpo.rehearse import servers as servers_mod
from sp2dpo.rehearse import snapshot, students

log = logging.getLogger(__name__)

#: Full sizes, the paper's run: UltraFeedback train_prefs rows and each eval set's items.
FULL_SIZES = {
    "pairs": 61_135,
    "alpaca_eval": 805,
    "mt_bench": 80,
    "ifeval": 541,
    "arena_hard": 500,
    "prefeval": 500,
}
#: The configuration rehearsed when neither ``--params`` nor a profile is given.
DEFAULT_PROFILE = "+profiles=paper-gpu"
#: Where the generated inputs go inside the scratch repository (git-ignored there).
INPUTS = "rehearse-inputs"
SNAPSHOT = f"{INPUTS}/uf_train_prefs.jsonl.gz"
STUDENTS = f"{INPUTS}/students"
#: The real UltraFeedback rows the project ships: the snapshot's and the tokenizer's texts.
UF_SAMPLE = "data/raw/uf_binarized_h4_train_prefs_500.jsonl.gz"
#: The value every API-key variable gets in the stages' environment: real keys never leave.
DUMMY_KEY = "rehearsal-not-a-key"
#: Environment variables that would point the scratch run at the user's stores or MLflow.
SCRUBBED_ENV = ("MLFLOW_TRACKING_URI", "SP2DPO_SHARED_CALLS", "DVC_ROOT", "DVC_EXP_NAME",
                "DVC_EXP_BASELINE_REV", "GIT_DIR", "GIT_WORK_TREE")
#: Time compression of the clients' waits, matching the servers' compressed latency.
DECODING_PATCH = {"timeout_s": 3.0, "backoff_base_s": 0.2, "backoff_max_s": 2.0, "retry_after_max_s": 5.0}
#: Seconds any one DVC command may take before the rehearsal gives up on it.
COMMAND_TIMEOUT_S = 6 * 3600


class RehearsalError(UserError, RuntimeError):
    """The rehearsal could not be set up or a stage failed (the message names its log)."""


@dataclass(frozen=True)
class Options:
    """What ``sp2dpo rehearse`` was asked: a configuration, a size and a place."""

    project: Path = Path(".")
    params: Path | None = None
    overrides: tuple[str, ...] = ()
    scale: float = 1.0
    workdir: Path | None = None
    max_steps: int = 2
    train_pairs: int = 16
    seed: int = 0
    latency_median_s: float = 0.04
    keep: bool = False
    reruns: bool = True  # annotate and eval forced to run again with every call stored


def scaled(full: int, scale: float) -> int:
    """``full x scale`` rounded, at least 1."""
    return max(1, round(full * scale))


# ------------------------------------------------------------------------------ the scratch copy


def _project_files(project: Path) -> list[str]:
    try:
        out = programs.git("ls-files", "-z", cwd=project, text=False).stdout
    except programs.ProgramError as exc:
        raise RehearsalError(f"{project}: not a git checkout of the project ({exc})") from None
    keep = []
    for name in out.decode().split("\0"):
        # The bundled remote and the lock of the offline run are not part of a rehearsal.
        if name and not name.startswith("dvc-store/") and name != "dvc.lock":
            keep.append(name)
    return sorted(keep)


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def copy_project(project: Path, repo: Path) -> None:
    """The project's tracked files and its DVC-tracked input data, copied into ``repo``
    (unchanged files are left alone, so a second rehearsal sees the same mtimes)."""
    for name in _project_files(project):
        src = project / name
        if src.is_file():
            _copy_if_changed(src, repo / name)
    for folder in ("data/raw", "data/evalsets"):
        src_dir = project / folder
        if not src_dir.is_dir():
            raise RehearsalError(f"{src_dir}: missing; run `dvc pull data.dvc evalsets.dvc` in the project first")
        for src in sorted(p for p in src_dir.rglob("*") if p.is_file()):
            _copy_if_changed(src, repo / src.relative_to(project))
    ignore = repo / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if f"/{INPUTS}/" not in lines:
        ignore.write_text("\n".join([*lines, f"/{INPUTS}/"]) + "\n")


def _git(repo: Path, *args: str) -> str:
    """``git ARGS`` in the scratch repository (:func:`sp2dpo.core.programs.git`), committing as
    the rehearsal; its output."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "sp2dpo rehearse", "GIT_AUTHOR_EMAIL": "rehearse@localhost",
           "GIT_COMMITTER_NAME": "sp2dpo rehearse", "GIT_COMMITTER_EMAIL": "rehearse@localhost"}
    return programs.git(*args, cwd=repo, env=env, timeout=600, error=RehearsalError).stdout


def commit_all(repo: Path, message: str) -> None:
    """Commit whatever changed in the scratch repository (nothing when nothing did)."""
    if not (repo / ".git").exists():
        _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    if _git(repo, "status", "--porcelain").strip():
        _git(repo, "commit", "-q", "-m", message)


# ------------------------------------------------------------------------------ the configuration


def compose(repo: Path, base: Path | None, overrides: Sequence[str]) -> dict[str, Any]:
    """The configuration rehearsed: ``base`` (default: the project's params.yaml) composed with
    ``overrides`` by Hydra, as ``dvc exp run -S`` would compose it (profiles included)."""
    from dvc.utils.hydra import compose_and_dump

    name = "rehearse-base"
    source = base if base is not None else repo / "params.yaml"
    shutil.copyfile(source, repo / f"{name}.yaml")
    out = repo / INPUTS / "composed.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        compose_and_dump(out, str(repo.resolve()), None, name, str(repo.resolve()), list(overrides))
    except Exception as exc:  # Hydra's errors name the bad override; keep that one line
        raise RehearsalError(f"cannot compose the configuration: {exc}") from None
    finally:
        (repo / f"{name}.yaml").unlink(missing_ok=True)
    cfg = yaml.safe_load(out.read_text())
    if not isinstance(cfg, dict):
        raise RehearsalError(f"{source}: the composed configuration is not a mapping")
    return cfg


def _server_teacher(entry: dict[str, Any], url: str) -> dict[str, Any]:
    """A teacher-shaped entry (teacher or judge) pointed at a loopback server, limits lifted."""
    out = dict(entry)
    if out.get("backend", "openai") != "openai":
        # A local (in-process) teacher becomes an OpenAI-compatible one of the same model name.
        out["backend"] = "openai"
        out["preset"] = "vllm"
        out.pop("revision", None)
    out["base_url"] = url
    out["rpm"] = None
    out["tpm"] = None
    return out


def rehearsal_params(cfg: dict[str, Any], scale: float, urls: Mapping[str, str],
                     student_dirs: Mapping[str, str], max_steps: int, train_pairs: int) -> dict[str, Any]:
    """``cfg`` with every paid or GPU part replaced (see the module's docstring)."""
    cfg = json.loads(json.dumps(cfg))  # a deep copy of plain data
    cfg["data"] = {**cfg["data"], "source": "local", "path": SNAPSHOT}
    cfg["teachers"] = [_server_teacher(t, urls[f"teacher-{t['id']}"]) for t in cfg["teachers"]]
    cfg["decoding"] = {**cfg["decoding"], **DECODING_PATCH}
    cfg["annotate"] = {**cfg["annotate"], "progress": False}

    train = cfg["train"]
    # One pair per device batch (the configured accumulation kept): the optimizer steps are the
    # GPU's work, and a CPU pays seconds per pair at length 2048 even for a tiny model.
    train["students"] = [
        {**s, "model": student_dirs[tiny_student_of(s["model"], s["name"])],
         "revision": None, "chat_template": None, "per_device_train_batch_size": 1}
        for s in train["students"]
    ]
    for method in train.get("methods", []):
        if "per_device_train_batch_size" in (method.get("train_args") or {}):
            method["train_args"] = {**method["train_args"], "per_device_train_batch_size": 1}
    if "paged" in str(train.get("optim", "")) or "8bit" in str(train.get("optim", "")):
        train["optim"] = "adamw_torch"  # bitsandbytes' optimizers need CUDA
    train.update(precision="fp32", launcher="python", max_steps=max_steps)
    if train_pairs:
        train["limit"] = train_pairs if train.get("limit") is None else min(train["limit"], train_pairs)

    ev = cfg["eval"]
    ev["server"] = {**ev.get("server", {}), "base_url": urls["student"], "models": {},
                    "api_key_env": None, "timeout_s": 30.0}
    ev["judge"] = _server_teacher(ev["judge"], urls["judge"])
    ev["judge_decoding"] = {**ev.get("judge_decoding", {}), **DECODING_PATCH}
    for suite in ("alpaca_eval", "mt_bench", "ifeval", "arena_hard", "prefeval"):
        ev[suite] = {**ev[suite], "limit": scaled(FULL_SIZES[suite], scale)}
    return cfg


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_ports(workdir: Path, names: Sequence[str]) -> dict[str, int]:
    """A loopback port per server, kept in ``workdir/ports.json``: the servers' URLs are params
    of the stages, so a second rehearsal in the same folder must find the same ones."""
    path = workdir / "ports.json"
    ports: dict[str, int] = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        ports.setdefault(name, _free_port())
    path.write_text(json.dumps(ports, indent=2, sort_keys=True) + "\n")
    return {name: ports[name] for name in names}


def server_specs(cfg: Mapping[str, Any], seed: int, latency_median_s: float,
                 workdir: Path) -> list[servers_mod.ServerSpec]:
    """One loopback server per teacher, one for the students' answers, one for the judge."""
    kinds = {f"teacher-{t['id']}": "teacher" for t in cfg["teachers"]}
    kinds.update(student="student", judge="judge")
    ports = server_ports(workdir, list(kinds))
    return [
        servers_mod.ServerSpec(
            name=name, kind=kind, seed=seed + i, latency_median_s=latency_median_s, port=ports[name],
            # the answer and judge servers answer late only by latency, never past the timeout
            **({} if kind == "teacher" else {"rate_timeout": 0.0}),
        )
        for i, (name, kind) in enumerate(kinds.items())
    ]


def mean_latency_s(spec: servers_mod.ServerSpec) -> float:
    """The mean of a server's lognormal latency (median x exp(sigma^2 / 2)), faults aside."""
    return spec.latency_median_s * math.exp(spec.latency_sigma**2 / 2)


def tiny_student_of(model: str, name: str) -> str:
    """Which tiny student (a key of :data:`students.PAPER_STUDENTS`) stands in for a student
    entry: the paper's students by name, any other by the architecture its model id names
    (``Qwen/...`` -> Qwen3, ``google/gemma-...`` -> Gemma 3, ``mistralai/...`` -> Mistral; else Llama)."""
    if name in students.PAPER_STUDENTS:
        return name
    by_arch = {arch: student for student, arch in students.PAPER_STUDENTS.items()}
    lowered = model.lower()
    for key, arch in (("qwen", "qwen3"), ("gemma", "gemma3"), ("mistral", "mistral")):
        if key in lowered:
            return by_arch[arch]
    return by_arch["llama"]


def _key_envs(cfg: Mapping[str, Any]) -> set[str]:
    names = {t.get("api_key_env") for t in cfg["teachers"]}
    names.add(cfg["eval"]["judge"].get("api_key_env"))
    names.add(cfg["eval"].get("server", {}).get("api_key_env"))
    return {n for n in names if n}


def stage_env(cfg: Mapping[str, Any], workdir: Path) -> dict[str, str]:
    """The stages' environment: offline, scratch locks, no pointer to the user's stores or
    MLflow, and a dummy value in every API-key variable (a real key never leaves)."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               DVC_NO_ANALYTICS="1", SP2DPO_LOCK_DIR=str(workdir / "locks"),
               # the stages' `python` is this interpreter (a venv need not be activated)
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    for name in _key_envs(cfg):
        env[name] = DUMMY_KEY
    return env


# ------------------------------------------------------------------------------ measuring


def _usage(paths: Sequence[Path]) -> tuple[float, int]:
    """MiB on disk and file count under ``paths`` (files or folders; missing ones count 0)."""
    size, count = 0, 0
    for path in paths:
        if path.is_file():
            size, count = size + path.stat().st_size, count + 1
        elif path.is_dir():
            for p in path.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    size, count = size + p.stat().st_size, count + 1
    return round(size / 2**20, 2), count


def stage_order(repo: Path) -> dict[str, list[Path]]:
    """Every pipeline stage (``train@qwen3_4b-sp2dpo``, ...) in an order that runs dependencies
    first, with the paths of its outputs."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(repo)) as dvc_repo:
        graph = dvc_repo.index.graph
        order = list(reversed(list(nx.topological_sort(graph))))
        return {s.name: [Path(str(o.fs_path)) for o in s.outs]
                for s in order if isinstance(s, PipelineStage)}


class Runner:
    """Runs and measures commands in the scratch repository."""

    def __init__(self, repo: Path, logs: Path, env: Mapping[str, str]) -> None:
        self.repo, self.logs, self.env = repo, logs, dict(env)
        self.dvc = programs.dvc_executable()
        logs.mkdir(parents=True, exist_ok=True)

    def measured(self, label: str, args: Sequence[str], cwd: Path | None = None) -> dict[str, Any]:
        """``args`` run under :mod:`sp2dpo.rehearse.measure`; its wall time and peak memory."""
        log_file = self.logs / (label.replace("@", "_").replace("/", "_") + ".log")
        log_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "sp2dpo.rehearse.measure", str(log_file), "--", *args]
        try:
            done = subprocess.run(cmd, cwd=cwd or self.repo, env=self.env, capture_output=True,
                                  text=True, timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RehearsalError(f"{label}: no end after {COMMAND_TIMEOUT_S} s (log: {log_file})") from None
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise RehearsalError(f"{label}: the measuring process failed: {done.stderr.strip()[-500:]}") from None
        if result["rc"] != 0:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
            raise RehearsalError(f"{label} failed (exit {result['rc']}; log: {log_file}): " + " | ".join(tail))
        return {"wall_s": result["wall_s"], "peak_rss_mib": result["peak_rss_mib"]}

    def dvc_cmd(self, label: str, *args: str, cwd: Path | None = None) -> dict[str, Any]:
        return self.measured(label, [self.dvc, *args], cwd=cwd)


def _delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after)}


# ------------------------------------------------------------------------------ the rehearsal


def prepare(options: Options, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """The scratch repository with the composed configuration (before the replacements) and
    the generated inputs; returns the repository and the configuration."""
    repo = workdir / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    project = options.project.resolve()
    copy_project(project, repo)
    overrides = list(options.overrides)
    if options.params is None:
        overrides.insert(0, DEFAULT_PROFILE)
    base = options.params.resolve() if options.params is not None else None
    if base is not None and not base.is_file():
        raise RehearsalError(f"--params {options.params}: no such file")
    # The project's params.yaml (just copied) is the base; params.yaml then becomes the rehearsal's.
    return repo, compose(repo, base, overrides)


def run(options: Options) -> dict[str, Any]:
    """The rehearsal; returns the measurements (the ``--json`` object)."""
    if not 0 < options.scale <= 1:
        raise RehearsalError(f"--scale must be in (0, 1], got {options.scale}")
    temporary = options.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sp2dpo-rehearse-")) if temporary else options.workdir
    assert workdir is not None
    workdir = workdir.resolve()
    try:
        return _run(options, workdir)
    finally:
        if temporary and not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(options: Options, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    repo, cfg = prepare(options, workdir)
    inputs: dict[str, Any] = {}
    t0 = time.perf_counter()
    rows = scaled(FULL_SIZES["pairs"], options.scale)
    inputs["snapshot"] = snapshot.write_snapshot(repo / UF_SAMPLE, repo / SNAPSHOT, rows, options.seed)
    inputs["snapshot_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    tiny = sorted({tiny_student_of(s["model"], s["name"]) for s in cfg["train"]["students"]})
    built = students.build_students(repo / STUDENTS, tiny, seed=options.seed, source=repo / UF_SAMPLE)
    inputs["students_s"] = round(time.perf_counter() - t0, 2)
    student_dirs = {name: str(Path(path).resolve().relative_to(repo)) for name, path in built.items()}

    specs = server_specs(cfg, options.seed, options.latency_median_s, workdir)
    env = stage_env(cfg, workdir)
    runner = Runner(repo, workdir / "logs", env)
    result: dict[str, Any] = {"scale": options.scale, "workdir": str(workdir), "inputs": inputs}
    with servers_mod.Servers(specs) as srv:
        params = rehearsal_params(cfg, options.scale, srv.base_urls, student_dirs, options.max_steps,
                                  options.train_pairs)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
        commit_all(repo, "rehearsal configuration")
        # The input data into the scratch DVC cache, as the project's own is (pushed and pulled).
        runner.dvc_cmd("dvc-commit-inputs", "commit", "-f", "data.dvc", "evalsets.dvc")
        stages = stage_order(repo)
        result["stages"] = {}
        for name, outs in stages.items():
            before = srv.counts()
            measured = runner.dvc_cmd(name, "repro", "-s", name)
            disk, files = _usage(outs)
            measured.update(disk_mib=disk, files=files, requests=_delta(srv.counts(), before))
            result["stages"][name] = measured
            log.info("rehearse: %s %.1f s, %.0f MiB peak, %.1f MiB out", name, measured["wall_s"],
                     measured["peak_rss_mib"], disk)
        result["rerun"] = _reruns(runner, srv, stages) if options.reruns else {}
        result["servers"] = srv.counts()
        result["annotate"] = _throughput(result["stages"].get("annotate"), specs, cfg)
    result["dvc"] = _dvc_ops(runner, repo, workdir)
    result["disk"] = _disk(repo, workdir)
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def _reruns(runner: Runner, srv: servers_mod.Servers, stages: Mapping[str, Any]) -> dict[str, Any]:
    """annotate and every eval stage forced to run again with every call stored: their time and
    the requests they sent (none expected)."""
    out = {}
    for name in stages:
        if name == "annotate" or name.startswith("eval@"):
            before = srv.counts()
            measured = runner.dvc_cmd(f"rerun-{name}", "repro", "-f", "-s", name)
            measured["requests"] = sum(_delta(srv.counts(), before).values())
            out[name] = measured
    return out


def _throughput(annotate: Mapping[str, Any] | None, specs: Sequence[servers_mod.ServerSpec],
                cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Calls/s of the annotate stage against the bound its servers allow (concurrency / mean
    latency), from the stage's requests and wall time (DVC's start-up included)."""
    if not annotate:
        return {}
    calls = sum(v for k, v in annotate["requests"].items() if k.startswith("teacher-"))
    concurrency = sum(int(t.get("max_concurrency") or 1) for t in cfg["teachers"])
    mean = [mean_latency_s(s) for s in specs if s.kind == "teacher"]
    bound = concurrency / (sum(mean) / len(mean)) if mean else 0.0
    rate = calls / annotate["wall_s"] if annotate["wall_s"] else 0.0
    return {"requests": calls, "concurrency": concurrency, "calls_per_s": round(rate, 1),
            "bound_calls_per_s": round(bound, 1), "efficiency": round(rate / bound, 3) if bound else None}


def _dvc_ops(runner: Runner, repo: Path, workdir: Path) -> dict[str, Any]:
    """``dvc status`` on the full outputs; ``dvc push`` to a local remote; ``dvc pull`` into a
    fresh clone."""
    remote, clone = workdir / "remote", workdir / "clone"
    add_remote = ("remote", "add", "--local", "-f", "-d", "rehearsal", str(remote))
    programs.dvc(*add_remote, cwd=repo, env=runner.env, error=RehearsalError)
    commit_all(repo, "rehearsal outputs")
    out = {"status": runner.dvc_cmd("dvc-status", "status")}
    out["push"] = runner.dvc_cmd("dvc-push", "push")
    shutil.rmtree(clone, ignore_errors=True)
    programs.git("clone", "-q", str(repo), str(clone), cwd=workdir, env=runner.env, timeout=600,
                 error=RehearsalError)
    programs.dvc(*add_remote, cwd=clone, env=runner.env, error=RehearsalError)
    out["pull"] = runner.dvc_cmd("dvc-pull", "pull", cwd=clone)
    return out


def _disk(repo: Path, workdir: Path) -> dict[str, Any]:
    parts = {
        "dvc_cache": [repo / ".dvc" / "cache"],
        "teacher_calls": [repo / "data" / "annotate" / "calls"],
        "eval_calls": [repo / "data" / "eval_calls"],
        "mlflow": [repo / "mlflow.db", repo / "mlruns", repo / "mlartifacts"],
        "models": [repo / "models"],
        "remote": [workdir / "remote"],
    }
    out = {}
    for name, paths in parts.items():
        mib, files = _usage(paths)
        out[name] = {"mib": mib, "files": files}
    return out
