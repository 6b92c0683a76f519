"""Layers import only downward, and no module imports itself back through others (issue 13).

Every `import ablate...` / `from ablate... import` in the package, at module level or inside a function, is an
edge; an edge to a higher layer, or a cycle among modules, fails the test with the file and line. Plug-in discovery
(`Registry(discover=...)`) imports by name at run time and is deliberately not an edge: that is how a lower layer
finds what registers on it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ablate"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"


def read_layers(document: Path = ARCHITECTURE) -> list[list[str]]:
    """The layer list, lowest first, from ARCHITECTURE.md's layer table (its one home): each row's second column
    names folders (`core/`) and files (`__main__.py`) of the package; the package itself sits in layer 0."""
    text = document.read_text()
    table = text[text.index("## Layers"):]
    layers: list[list[str]] = []
    for line in table.splitlines()[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            if layers and not line.startswith("|"):
                break
            continue
        assert int(cells[0]) == len(layers), f"ARCHITECTURE.md: layer {cells[0]} out of order"
        names = re.findall(r"`([^`]+)`", cells[1])
        layers.append(["ablate." + n.rstrip("/").removesuffix(".py").replace("/", ".") for n in names])
    layers[0].insert(0, "ablate")
    return layers


LAYERS = read_layers()


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, length = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def imports(package: Path = PACKAGE) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported ablate module, line)]."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    out: dict[str, list[tuple[str, int]]] = {}
    for name, path in modules.items():
        edges = []
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target.startswith("ablate"):
                    while target not in modules and "." in target:
                        target = target.rsplit(".", 1)[0]
                    if target in modules and target != name:
                        edges.append((target, node.lineno))
        out[name] = sorted(set(edges))
    return out


# `ablate/__init__.py` is the public facade: it may name the API (lazily, inside `__getattr__`), and every module
# may import the package itself (for `__version__`)
FACADE = {("ablate", "ablate.results.rows")}


def test_every_import_points_down():
    upward = [f"{module} line {line} imports {target} (layer {layer_of(target)} > {layer_of(module)})"
              for module, edges in imports().items() for target, line in edges
              if layer_of(target) > layer_of(module) and (module, target) not in FACADE]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = {m: sorted({t for t, _ in edges}) for m, edges in imports().items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in graph.get(node, []):
            if nxt == "ablate" or node == "ablate":  # the package __init__ is imported by every submodule
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The walk is not vacuous: in a copy of the package with one planted local import of the CLI inside the data
    layer, that edge is found and points up."""
    import shutil

    copy = tmp_path / "ablate"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    corpus = copy / "data" / "corpus.py"
    corpus.write_text(corpus.read_text() + "\n\ndef _planted():\n    from ablate.cli.main import main\n    return main\n")
    edges = imports(copy)
    planted = [(t, line) for t, line in edges["ablate.data.corpus"] if t == "ablate.cli.main"]
    assert planted and layer_of("ablate.cli.main") > layer_of("ablate.data.corpus")
    assert not any(t == "ablate.cli.main" for t, _ in imports()["ablate.data.corpus"])


MAX_LINES = 450  # a module a newcomer can read in one sitting
LONG_BY_NATURE = {"ablate/data/synthetic.py"}  # the corpus generator: its grammar and lexicon are one table


def test_the_package_root_is_small_and_no_module_is_long():
    """At most 8 modules at the package root (the layers live in folders) and none over MAX_LINES lines but the
    corpus generator (issue 25)."""
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 8, root
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {f: n for f, n in long.items() if n > MAX_LINES and f not in LONG_BY_NATURE} == {}


def test_every_folder_of_the_package_is_in_the_layer_table():
    """ARCHITECTURE.md's table names every folder (a new one must be placed in a layer before it is used)."""
    folders = {f"ablate.{p.name}" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    listed = {name for layer in LAYERS for name in layer}
    assert folders <= listed, sorted(folders - listed)
