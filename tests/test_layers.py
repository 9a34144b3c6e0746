"""Layers only look down: no module of parbp imports one of a higher layer (parbp.LAYERS)."""
from pathlib import Path

import parbp
from parbp import study

LIB = Path(parbp.__file__).parent
LEVEL = {m: i for i, (_, modules) in enumerate(parbp.LAYERS.items()) for m in modules}
NAME = {m: layer for layer, modules in parbp.LAYERS.items() for m in modules}


def imported(path: Path) -> set[str]:
    """The parbp modules ``path`` imports (``parbp.study.imported``: the trainer registry's by-name loads are
    not imports, which is how a core registry lists trainers of a higher layer)."""
    return study.imported(path.read_text(), by_name=False)


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
