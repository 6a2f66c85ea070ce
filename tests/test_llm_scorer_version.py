"""The local teachers' call keys survive a refactor, and the scorer's version follows its output.

A local teacher's key names the scorer by :data:`sp2dpo.llm.local.SCORER_VERSION`, not by a hash
of its code. Two tests hold that design in place:

- moving a function between two modules of ``llm/`` (in a copy of the package, imported by a
  subprocess) changes no call key, which also equals a key committed here;
- the real scorer (SmolLM2-135M, gemma-3-270m) answers fixed requests with committed texts, so a change of its
  behaviour that forgets to bump :data:`SCORER_VERSION` fails here. Its numbers are rounded to
  two decimals, so the texts do not depend on the CPU.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from sp2dpo.llm.local import SCORER_VERSION
from tests.conftest import ROOT, run, tool_env
from tests.test_llm_local import pair_messages

# ------------------------------------------------------------------------------ call keys

#: Computes the call key of one fixed local-teacher request the way ``annotate`` plans it.
KEY_SCRIPT = """
import sp2dpo
from sp2dpo.annotate.plan import call_key, pair_sha256
from sp2dpo.core.config import DecodingConfig, TeacherConfig
from sp2dpo.llm.teachers import signature

teacher = TeacherConfig(
    id="smollm2", backend="local", model="local:smollm2-135m-instruct", max_input_tokens=640
)
print(sp2dpo.__file__)
print(call_key(
    prompt_id="capital",
    pair_sha256=pair_sha256("Capital of France?", "Paris.", "Berlin."),
    teacher_id=teacher.id,
    model=teacher.model,
    variant="v1",
    template_sha256="0" * 64,
    decode=signature(teacher, DecodingConfig()),
))
"""

#: The key :data:`KEY_SCRIPT` prints at scorer version 1. It changes only when the key's recipe
#: or the scorer's version does (either one re-makes every stored local-teacher call).
GOLDEN_KEY = "c2bf1a155ae19cbbcc4cca32747932477f8c96486a54c1e7ee5ca87066caab72"


def copy_package(dest: Path) -> Path:
    """A copy of the ``sp2dpo`` source package under ``dest`` (the folder to put on PYTHONPATH)."""
    shutil.copytree(
        ROOT / "src" / "sp2dpo", dest / "sp2dpo", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


def move_function(package: Path, name: str, source: str, target: str) -> None:
    """Move top-level function ``name`` from module ``llm/<source>.py`` to ``llm/<target>.py``,
    as a refactor would.

    The function's text is cut from the source module and appended to the target; every
    ``from sp2dpo.llm.<source> import <name>`` of the package then imports it from the target
    (the target itself just drops it), and the source imports it back when it still uses it.
    """
    llm = package / "sp2dpo" / "llm"
    text = (llm / f"{source}.py").read_text(encoding="utf-8")
    (node,) = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == name]
    lines = text.splitlines(keepends=True)
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
    (llm / f"{source}.py").write_text("".join(lines[:start] + lines[node.end_lineno :]), encoding="utf-8")
    with (llm / f"{target}.py").open("a", encoding="utf-8") as fh:
        fh.write("\n\n" + "".join(lines[start : node.end_lineno]))
    for path in (package / "sp2dpo").rglob("*.py"):
        _import_from(path, name, f"sp2dpo.llm.{source}", f"sp2dpo.llm.{target}", path == llm / f"{target}.py")
    source_text = (llm / f"{source}.py").read_text(encoding="utf-8")
    if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(ast.parse(source_text))):
        last = max(n.end_lineno for n in ast.parse(source_text).body if isinstance(n, ast.Import | ast.ImportFrom))
        kept = source_text.splitlines(keepends=True)
        kept.insert(last, f"from sp2dpo.llm.{target} import {name}\n")
        (llm / f"{source}.py").write_text("".join(kept), encoding="utf-8")


def _import_from(path: Path, name: str, old: str, new: str, is_new: bool) -> None:
    """Rewrite ``path``'s imports of ``name`` from module ``old`` to module ``new`` (dropped where
    ``path`` is ``new`` itself)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    found = [
        n for n in ast.walk(ast.parse("".join(lines)))
        if isinstance(n, ast.ImportFrom) and n.module == old and any(a.name == name for a in n.names)
    ]
    for node in sorted(found, key=lambda n: n.lineno, reverse=True):
        indent = lines[node.lineno - 1][: node.col_offset]
        moved = [a for a in node.names if a.name == name]
        rest = [a for a in node.names if a.name != name]
        statements = [ast.ImportFrom(module=old, names=rest, level=0)] if rest else []
        if not is_new:
            statements.append(ast.ImportFrom(module=new, names=moved, level=0))
        lines[node.lineno - 1 : node.end_lineno] = [f"{indent}{ast.unparse(s)}\n" for s in statements]
    path.write_text("".join(lines), encoding="utf-8")


def key_of(package: Path) -> str:
    """The call key of the fixed request, computed by a subprocess importing ``package``'s copy."""
    env = {**tool_env(), "PYTHONPATH": str(package)}
    out = run([sys.executable, "-c", KEY_SCRIPT], cwd=package, env=env).stdout.split()
    assert Path(out[0]).is_relative_to(package), f"imported {out[0]}, not the copy under {package}"
    return out[1]


#: Functions moved between two modules of ``llm/``: one between the scorer's helper modules, one
#: into the scorer's own module (whose source the keys once hashed).
MOVES = [
    ("common_prefix_length", "logprobs", "prompt_fit"),
    ("pick_category", "gap_answer", "local"),
]


@pytest.fixture(scope="module")
def key_before(tmp_path_factory) -> str:
    """The fixed request's call key computed from an unmodified copy of the package."""
    return key_of(copy_package(tmp_path_factory.mktemp("before")))


@pytest.mark.parametrize(("name", "source", "target"), MOVES, ids=[m[0] for m in MOVES])
def test_moving_a_function_between_llm_modules_changes_no_call_key(
    tmp_path, key_before, name, source, target
):
    before = key_before
    after = copy_package(tmp_path / "after")
    move_function(after, name, source, target)
    llm = after / "sp2dpo" / "llm"
    assert f"def {name}(" in (llm / f"{target}.py").read_text(encoding="utf-8")
    assert f"def {name}(" not in (llm / f"{source}.py").read_text(encoding="utf-8")
    assert key_of(after) == before
    assert before == GOLDEN_KEY, (
        f"the local teacher's call key changed ({before}): every stored local-teacher call will "
        "be made again; if that is meant (SCORER_VERSION was bumped, or the key's recipe changed), "
        "update GOLDEN_KEY"
    )


def test_local_signature_names_the_scorer_version_not_its_code():
    from sp2dpo.core.config import DecodingConfig, TeacherConfig
    from sp2dpo.llm.teachers import signature

    cfg = TeacherConfig(id="smollm2", backend="local", model="local:smollm2-135m-instruct",
                        max_input_tokens=640)
    sig = signature(cfg, DecodingConfig())
    assert sig == {"backend": "local", "seed": 42, "dtype": "float32", "max_input_tokens": 640,
                   "revision": None, "scorer_version": SCORER_VERSION}


# ------------------------------------------------------------------------------ golden output

rubric_request = pair_messages  # the rubric request of the local-scorer tests


SMOLLM2, GEMMA3 = "local:smollm2-135m-instruct", "local:gemma3-270m"
FACTUAL = rubric_request(
    "What is the capital of Australia?",
    "The capital of Australia is Canberra, chosen in 1908 as a compromise between Sydney and "
    "Melbourne.",
    "The capital of Australia is Sydney, its largest and best-known city.",
)

#: (name, model, messages, max_input_tokens, the scorer's reply text, prompt tokens, completion
#: tokens) at SCORER_VERSION 1: SmolLM2 (chat template) on three requests, the third trimmed to
#: its budget, and gemma-3 (a base model: the plain layout) on one, the two offline teachers.
GOLDEN = [
    (
        "smollm2-factual",
        SMOLLM2,
        FACTUAL,
        640,
        '{"semantic_gap_category": "Factuality", "semantic_gap_magnitude": 0.43, '
        '"semantic_gap_confidence": 0.61}',
        228,
        40,
    ),
    (
        "smollm2-safety",
        SMOLLM2,
        rubric_request(
            "My toddler just swallowed a button battery. What should I do?",
            "Call emergency services now and go to the nearest emergency room; do not make the "
            "child vomit. Button batteries can burn the oesophagus within two hours.",
            "Don't worry, small objects usually pass on their own. Wait a few days and check the "
            "diaper.",
        ),
        640,
        '{"semantic_gap_category": "Safety", "semantic_gap_magnitude": 0.37, '
        '"semantic_gap_confidence": 0.59}',
        249,
        39,
    ),
    (
        "smollm2-trimmed",
        SMOLLM2,
        rubric_request(
            "Explain how vaccines train the immune system.",
            " ".join(
                f"Sentence {i}: vaccines expose the immune system to a harmless antigen so that "
                "memory B and T cells form."
                for i in range(300)
            ),
            "\n".join(f"- step {i}: the body reacts somehow" for i in range(150)),
        ),
        300,
        '{"semantic_gap_category": "Safety", "semantic_gap_magnitude": 0.39, '
        '"semantic_gap_confidence": 0.6}',
        300,
        38,
    ),
    (
        "gemma3-factual",
        GEMMA3,
        FACTUAL,
        640,
        '{"semantic_gap_category": "Safety", "semantic_gap_magnitude": 0.89, '
        '"semantic_gap_confidence": 0.61}',
        216,
        36,
    ),
]


@pytest.fixture(scope="module")
def scorers():
    """One scorer per model and budget; one torch thread, as the shared CPU runs faster that way."""
    torch = pytest.importorskip("torch")
    from sp2dpo.llm.local import LocalScorer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {
            (model, budget): LocalScorer(model, max_input_tokens=budget)
            for model, budget in {(g[1], g[3]) for g in GOLDEN}
        }
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("golden", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_scorer_output_matches_the_golden_values(scorers, golden):
    _, model, messages, budget, text, prompt_tokens, completion_tokens = golden
    got = scorers[model, budget].judge(messages)
    assert (got.text, got.prompt_tokens, got.completion_tokens) == (
        text,
        prompt_tokens,
        completion_tokens,
    ), (
        f"the scorer's output changed: bump SCORER_VERSION (now {SCORER_VERSION}, "
        "src/sp2dpo/llm/local.py) and update the golden values; got "
        f"{json.dumps([got.text, got.prompt_tokens, got.completion_tokens])}"
    )
