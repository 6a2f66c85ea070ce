"""Shared fixtures: offline environment, the shipped data sample, a throwaway project copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def run(cmd: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; on failure show it in the assertion."""
    proc = subprocess.run(cmd, cwd=cwd, env=kwargs.pop("env", tool_env()), capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Terminate a server started by a test; kill it if it does not exit in ``timeout`` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
        cwd=ROOT, capture_output=True, check=True,
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
