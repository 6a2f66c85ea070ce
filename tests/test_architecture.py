"""The package's shape, derived from the code: layers with imports only pointing down, no import
cycle, stage packages that never import each other, and DVC stages whose deps cover every module
their command imports (so a code change can never leave an output `dvc status` calls current)."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "sp2dpo"

#: Layer of each unit (a top-level subpackage or module of sp2dpo); imports only point down.
LAYERS: dict[str, int] = {
    "sp2dpo": 0,  # the package root: a docstring, __version__ and the numerics pins
    "numerics": 0,  # the CPU numerics pins, standard library only, applied by the root on import
    "core": 1,
    "llm": 2,
    "tracking": 2,
    **dict.fromkeys(("data", "annotate", "aggregate", "train", "evaluate", "report", "audit", "sweep", "rehearse"), 3),
    "cli": 4,
}
#: The one import of the package root: the pins must be set before anything imports torch.
ROOT_IMPORT = ("sp2dpo", "numerics")
STAGE_PACKAGES = frozenset(u for u, layer in LAYERS.items() if layer == 3)


# ------------------------------------------------------------------------------ the import graph


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(source: str, name: str, is_package: bool, known: Iterable[str]) -> set[str]:
    """The sp2dpo modules a source imports, anywhere in it (top level, functions, branches).

    ``from a.b import c`` names module ``a.b.c`` when that is a module, else ``a.b``; relative
    imports are resolved against ``name``.
    """
    known = set(known)
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {m for m in found if m == "sp2dpo" or m.startswith("sp2dpo.")}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {
        name: imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", files) - {name}
        for name, path in files.items()
    }


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sp2dpo"


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layering_violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Imports that point up or sideways between units, or into ``cli``."""
    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            a, b = unit(src), unit(dst)
            if a == b or (a, b) == ROOT_IMPORT:
                continue
            if b == "cli":
                bad.append(f"{src} imports {dst}: nothing imports the cli")
            elif a in STAGE_PACKAGES and b in STAGE_PACKAGES:
                bad.append(f"{src} imports {dst}: a stage package never imports another")
            elif LAYERS[a] <= LAYERS[b]:
                bad.append(f"{src} (layer {LAYERS[a]}) imports {dst} (layer {LAYERS[b]}): imports point down")
    return bad


def test_every_unit_has_a_layer():
    assert {unit(m) for m in module_files()} <= set(LAYERS)


def test_import_graph_has_no_cycle():
    graph = import_graph()
    # The graph sees imports inside functions too (the cli imports `train` in its command only).
    assert "sp2dpo.train" in graph["sp2dpo.cli.pipeline"]
    assert sum(map(len, graph.values())) > 100
    assert cycles(graph) == []


def test_imports_point_down_and_stage_packages_never_import_each_other():
    assert layering_violations(import_graph()) == []


def test_the_checks_catch_what_they_guard():
    """The checkers on small graphs: the cycle and the bad edges of the old tangle are found."""
    tangled = {
        "sp2dpo.cli": {"sp2dpo.evaluate.stage"},
        "sp2dpo.evaluate.stage": {"sp2dpo.evaluate.winrate", "sp2dpo.annotate.stage"},
        "sp2dpo.evaluate.winrate": {"sp2dpo.train.stage"},
        "sp2dpo.train.stage": {"sp2dpo.cli"},
        "sp2dpo.core.config": {"sp2dpo.llm.models"},
    }
    assert cycles(tangled) == [
        ["sp2dpo.cli", "sp2dpo.evaluate.stage", "sp2dpo.evaluate.winrate", "sp2dpo.train.stage"]
    ]
    bad = layering_violations(tangled)
    assert any("sp2dpo.evaluate.stage imports sp2dpo.annotate.stage: a stage package" in b for b in bad)
    assert any("sp2dpo.train.stage imports sp2dpo.cli: nothing imports the cli" in b for b in bad)
    assert any("sp2dpo.core.config (layer 1) imports sp2dpo.llm.models (layer 2)" in b for b in bad)
    source = "def f():\n    from ..core import config\n    import sp2dpo.llm.models\n"
    assert imported_modules(source, "sp2dpo.train.stage", False, ["sp2dpo.core.config"]) == {
        "sp2dpo.core.config", "sp2dpo.llm.models",
    }


# ------------------------------------------------------------------------------ DVC deps


def closure(script: Path, graph: Mapping[str, set[str]], files: Mapping[str, Path]) -> set[Path]:
    """Files of every sp2dpo module a stage script runs: what it imports, transitively, and the
    ``__init__.py`` of every package on the way (importing ``a.b.c`` runs ``a`` and ``a.b``)."""
    todo = list(imported_modules(script.read_text(encoding="utf-8"), "__main__", False, files))
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(graph.get(module, ()))
    return {files[m] for m in seen}


def resolved_stages() -> list[tuple[str, str, list[str]]]:
    """``(name, cmd, deps)`` of every pipeline stage, matrix expanded, as DVC reads dvc.yaml."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [
            (stage.addressing, stage.cmd, [str(d.def_path) for d in stage.deps])
            for stage in repo.index.stages
            if stage.cmd
        ]


def covered(path: Path, deps: Iterable[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.fixture(scope="module")
def stages() -> list[tuple[str, str, list[str]]]:
    return resolved_stages()


def test_every_stage_is_a_thin_script_in_stages(stages):
    names = {name.split("@")[0] for name, _, _ in stages}
    assert names == {"fetch", "filter", "annotate", "aggregate", "train", "eval", "report"}
    for name, cmd, deps in stages:
        scripts = re.findall(r"\bstages/\w+\.py\b", cmd)
        assert len(scripts) == 1, f"{name}: {cmd}"
        assert scripts[0] in deps, f"{name}: its script {scripts[0]} is not a dep"


def test_dvc_deps_cover_the_code_each_stage_imports_and_nothing_else(stages):
    graph, files = import_graph(), module_files()
    for name, cmd, deps in stages:
        script = ROOT / re.search(r"\bstages/\w+\.py\b", cmd).group(0)
        code = closure(script, graph, files)
        missing = sorted(p.relative_to(ROOT).as_posix() for p in code if not covered(p, deps))
        assert missing == [], f"{name} imports code its deps do not cover: {missing}"
        for dep in deps:
            if dep.startswith("src/"):
                assert any(covered(p, [dep]) for p in code), f"{name}: {dep} is code the stage never imports"


def test_each_stage_imports_only_its_own_stage_package(stages):
    graph, files = import_graph(), module_files()
    by_file = {path: name for name, path in files.items()}
    own = {"fetch": "data", "filter": "data", "eval": "evaluate"}
    for name, cmd, _ in stages:
        stage = name.split("@")[0]
        script = ROOT / re.search(r"\bstages/\w+\.py\b", cmd).group(0)
        units = {unit(by_file[p]) for p in closure(script, graph, files)}
        assert units & STAGE_PACKAGES == {own.get(stage, stage)}, (name, units)
        if stage in ("fetch", "filter", "aggregate", "report"):
            assert "llm" not in units and "tracking" not in units, (name, units)


def test_template_folders_are_deps_of_the_stages_that_read_them(stages):
    from sp2dpo.core import config
    from sp2dpo.evaluate.judges.prompts import DEFAULT_PROMPTS_DIR

    deps = {name: d for name, _, d in stages}
    assert config.load(ROOT / "params.yaml").prompts.dir in deps["annotate"]
    assert all(DEFAULT_PROMPTS_DIR.as_posix() in d for n, d in deps.items() if n.startswith("eval@"))
    assert (ROOT / ".dvcignore").read_text().count("__pycache__/") == 1
