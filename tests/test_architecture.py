"""The shape of runner/, checked from its source: the import graph of its modules has no cycle,
the pure stages (plan, diagnose, config) reach no side-effect stage, and no Python program
hides in a string run with ``python -c``.

Every import counts, at the top of a module or inside a function: an import moved into a
function still ties the two modules together, it only hides the tie from the reader.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path
from typing import Dict, List, Set

import pytest

RUNNER = Path(__file__).resolve().parents[1] / "runner"

# Stages that decide from what they are given, with no I/O of their own.
PURE = ("runner.plan", "runner.diagnose", "runner.config")
# Stages that touch the outside world: processes, HTTP, NVML, files.
SIDE_EFFECTS = (
    "runner.probe",
    "runner.preflight",
    "runner.launch",
    "runner.verify",
    "runner.measure",
    "runner.record",
)
# What a pure stage may still import from a side-effect package, and why.
ALLOWED = {
    # HardwareProbe and Gpu are the probe's record, the planner's input; the module's NVML and
    # nvidia-smi calls run only when probe_hardware() is called, which no pure module does.
    "runner.probe.hardware": "the probe's records (HardwareProbe, Gpu), the plan's input",
    # model_dir() names the directory vLLM will read: the plan puts it in argv. It stats
    # model.path (a local directory or a hub id?) and writes nothing.
    "runner.probe.models": "model_dir(), where the weights are: one stat of model.path, no write",
    # model_dir() of a hub id (org/name) is its cached snapshot, when the cache has one: a lookup
    # in the local hub cache; the module's downloads run only when the launch asks for them.
    "runner.probe.hub": "parse() and snapshot_dir(), for model_dir(): a look in the local hub cache",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(RUNNER.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: Dict[str, Path] = {module_name(p): p for p in sorted(RUNNER.rglob("*.py"))}


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    is_package = MODULES[importer].name == "__init__.py"
    base = package if is_package else package[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> Set[str]:
    """The runner modules that module imports, anywhere in its body."""
    found: Set[str] = set()
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            # `from runner.plan import cluster` imports the module runner.plan.cluster
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            # `import runner.plan.build` binds runner but runs runner.plan.build
            while target and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name:
                found.add(target)
    return found


GRAPH: Dict[str, Set[str]] = {name: imports_of(name) for name in MODULES}


def in_package(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_sees_the_runner():
    # a guard for the tests below: an empty or broken graph would pass them vacuously
    assert "runner.plan.build" in GRAPH and "runner.pipeline" in GRAPH
    assert {"runner.plan.rules", "runner.plan.cluster", "runner.plan.shape"} <= GRAPH["runner.plan.build"]


def test_no_import_cycle():
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        pytest.fail("import cycle: " + " -> ".join(cycle))


def _path_from(start: str, goal) -> List[str]:
    """The import chain from start to the first module goal(module) accepts, or []."""
    seen = {start}
    frontier = [[start]]
    while frontier:
        chain = frontier.pop(0)
        for nxt in sorted(GRAPH[chain[-1]]):
            if nxt in seen:
                continue
            seen.add(nxt)
            if goal(nxt):
                return chain + [nxt]
            if nxt not in ALLOWED:  # an allowed module is a leaf for this check: its reason covers it
                frontier.append(chain + [nxt])
    return []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if in_package(m, PURE)))
def test_pure_stages_reach_no_side_effect_stage(module):
    chain = _path_from(module, lambda m: in_package(m, SIDE_EFFECTS) and m not in ALLOWED)
    assert not chain, f"{module} is pure but reaches a side-effect module: {' -> '.join(chain)}"


def test_allowed_modules_stay_leaves_of_the_side_effect_world():
    # what a pure stage is allowed to import must not pull the rest of the side-effect world in
    for name in ALLOWED:
        reached = sorted(m for m in GRAPH.get(name, ()) if in_package(m, SIDE_EFFECTS) and m not in ALLOWED)
        assert not reached, f"{name} (allowed in pure stages) imports {reached}"


def python_c_lines(source: str) -> List[int]:
    """The lines of every argument list holding '-c': a program run with ``python -c``."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.List, ast.Tuple))
        and any(isinstance(e, ast.Constant) and e.value == "-c" for e in node.elts)
    ]


def test_the_python_c_search_finds_a_program():
    assert python_c_lines('x = 1\nsubprocess.run([python, "-c", PROGRAM, address])') == [2]
    assert python_c_lines('subprocess.run([python, "-m", "runner.preflight.ray_attach"])') == []


# Programs the runner writes for another machine, never runs itself: the exported Kubernetes
# Deployment's readiness probe runs inside the vLLM container, whose image has Python but need not
# have curl, and must send the API key from the container's own environment.
NOT_RUN_BY_THE_RUNNER = {"runner/record/export.py"}


def test_no_python_programs_in_strings():
    found = [
        f"{path.relative_to(RUNNER.parent)}:{line}"
        for path in MODULES.values()
        if str(path.relative_to(RUNNER.parent)) not in NOT_RUN_BY_THE_RUNNER
        for line in python_c_lines(path.read_text())
    ]
    assert not found, "Python run from a string with -c (make it a module run with python -m): " + ", ".join(found)
