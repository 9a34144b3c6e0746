"""Layers only look down: no module of parbp imports one of a higher layer (parbp.LAYERS)."""
import ast
from pathlib import Path

import parbp

LIB = Path(parbp.__file__).parent
LEVEL = {m: i for i, (_, modules) in enumerate(parbp.LAYERS.items()) for m in modules}
NAME = {m: layer for layer, modules in parbp.LAYERS.items() for m in modules}


def imported(path: Path) -> set[str]:
    """The parbp modules ``path`` imports, at the top or inside a function: ``from . import x``,
    ``from .x import y``, ``from parbp.x import y``, ``import parbp.x``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or node.module == "parbp" or (node.module or "").startswith("parbp."):
                module = (node.module or "").removeprefix("parbp").lstrip(".")
                found |= {module.split(".")[0]} if module else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("parbp.")}
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in LIB.glob("*.py")} - {"__init__", "__main__"}
    assert modules - set(LEVEL) == set(), "put these modules in a layer of parbp.LAYERS"
    assert set(LEVEL) - modules == set(), "parbp.LAYERS names modules that do not exist"


def test_no_module_imports_a_higher_layer():
    upward = [f"{p.stem} ({NAME[p.stem]}) imports {m} ({NAME[m]})"
              for p in sorted(LIB.glob("*.py")) if p.stem in LEVEL
              for m in sorted(imported(p)) if m in LEVEL and LEVEL[m] > LEVEL[p.stem]]
    assert upward == []


def test_the_reader_sees_upward_imports(tmp_path):
    """The check itself can fail: a core module importing the benchmark is caught, in each spelling."""
    for line in ("from . import bench", "from .bench import run", "from parbp.bench import run",
                 "import parbp.bench", "def f():\n    from .bench import run"):
        (tmp_path / "x.py").write_text(line + "\n")
        assert imported(tmp_path / "x.py") == {"bench"}
