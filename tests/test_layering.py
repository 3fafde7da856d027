"""Dependencies flow one way: core ← verification ← training (design card)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "hessid": {"openmm", "torchmdnet", "mdtraj", "deeptime", "ot", "h5py", "lightning", "pdbfixer",
               "hessid.verification", "hessid.training", "sympy"},
    "verification": {"openmm", "torchmdnet", "mdtraj", "lightning", "hessid.training"},
}


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_from_layers_above_it(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- source rules
# Each rule is a function of (source text, module name) -> list of violations, run over the
# package trees and, as a negative control, over a small source string holding the violation.

#: installed package name → folder of the repository
PACKAGE_DIRS = {"hessid": "hessid", "hessid.verification": "verification", "hessid.training": "training"}


def _module_name(path: pathlib.Path) -> str:
    """Dotted module name of a repository file (``training/data/io.py`` → ``hessid.training.data.io``)."""
    rel = path.relative_to(ROOT)
    for package, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[1])):
        if rel.parts[0] == folder:
            parts = [p for p in rel.with_suffix("").parts[1:] if p != "__init__"]
            return ".".join([package, *parts])
    return ".".join(rel.with_suffix("").parts)


def _sources(folders: tuple[str, ...], exempt: tuple[str, ...] = ()) -> list[tuple[pathlib.Path, str]]:
    """(path, module name) of every ``.py`` under ``folders`` except those under ``exempt``."""
    out = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not any(rel.startswith(e.rstrip("/") + "/") for e in exempt):
                out.append((path, _module_name(path)))
    return out


def _project_modules() -> set[str]:
    return {m for _, m in _sources(tuple(PACKAGE_DIRS.values()))}


def h5py_violations(source: str, module: str = "") -> list[str]:
    """``import h5py`` / ``from h5py import …`` / ``h5py.File`` in ``source`` (line: text)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        if any(n == "h5py" or n.startswith("h5py.") for n in names):
            bad.append(f"{node.lineno}: imports h5py")
        if isinstance(node, ast.Attribute) and node.attr == "File" and isinstance(node.value, ast.Name) \
                and node.value.id == "h5py":  # fmt: skip
            bad.append(f"{node.lineno}: h5py.File")
    return bad


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_import_violations(source: str, module: str, modules: set[str]) -> list[str]:
    """``from hessid… import _name`` and ``<hessid module>._name`` in ``source`` of ``module``.

    ``modules``: dotted names of the project's modules (to tell a module alias from an object).
    """
    tree = ast.parse(source)
    bad, alias = [], {}  # local name → dotted module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "hessid":
            for a in node.names:
                if _is_private(a.name) and node.module != module:
                    bad.append(f"{node.lineno}: from {node.module} import {a.name}")
                if f"{node.module}.{a.name}" in modules:
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "hessid":
                    alias[a.asname or "hessid"] = a.name if a.asname else "hessid"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in alias:
                target = ".".join([alias[value.id], *reversed(chain)])
                if target in modules and target != module:
                    bad.append(f"{node.lineno}: {target}.{node.attr}")
    return bad


def function_import_violations(source: str, module: str = "") -> list[str]:
    """Imports inside a function body whose lines carry no ``# optional:`` comment."""
    lines = source.splitlines()
    bad = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    text = lines[node.lineno - 1 : node.end_lineno]
                    if not any("# optional:" in line for line in text):
                        bad.append(f"{node.lineno}: {text[0].strip()}")
    return bad


def _violations(rule, sources, *args) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{v}" for path, module in sources
            for v in rule(path.read_text(), module, *args)]  # fmt: skip


def test_h5py_is_used_only_inside_training_data():
    sources = _sources(("hessid", "verification", "training"), exempt=("training/data",))
    bad = _violations(h5py_violations, sources)
    assert not bad, "h5py outside training/data/ (read with open_dataset, write with training/data):\n" + "\n".join(bad)


def test_no_module_reaches_into_another_modules_private_names():
    sources = _sources(("hessid", "verification", "training", "benchmarks"))
    bad = _violations(private_import_violations, sources, _project_modules())
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_imports_are_at_module_top_except_optional_dependencies():
    sources = _sources(("hessid", "verification", "training"))
    bad = _violations(function_import_violations, sources)
    assert not bad, "function-level imports without `# optional:`:\n" + "\n".join(bad)


# negative controls: each rule reports the violation it exists for, and only that

H5PY_BAD = """
import h5py

def read(path):
    with h5py.File(path) as f:
        return f["x"][()]
"""

PRIVATE_BAD = """
import hessid.maps as maps_module
from hessid import probes
from hessid.maps import _helper, LinearMap

def f(x):
    return maps_module._other(x) + probes._generator(0, 1) + x._attr_of_an_object
"""

FUNCTION_IMPORT_BAD = """
import json

def f():
    import numpy as np
    from dask.distributed import Client  # optional: distributed (dask extra)
    return np, Client
"""


def test_h5py_rule_reports_an_import_and_a_file_open():
    assert h5py_violations(H5PY_BAD) == ["2: imports h5py", "5: h5py.File"]
    assert h5py_violations("import numpy\nx = numpy.zeros(3)\n") == []


def test_private_rule_reports_private_imports_and_module_attributes_only():
    modules = {"hessid.maps", "hessid.probes", "hessid.toy"}
    bad = private_import_violations(PRIVATE_BAD, "hessid.toy", modules)
    assert sorted(bad) == ["4: from hessid.maps import _helper", "7: hessid.maps._other",
                           "7: hessid.probes._generator"]  # fmt: skip
    # a module may use its own private names
    assert private_import_violations("import hessid.maps\nhessid.maps._x\n", "hessid.maps", modules) == []


def test_function_import_rule_reports_imports_without_the_optional_comment():
    assert function_import_violations(FUNCTION_IMPORT_BAD) == ["5: import numpy as np"]
    assert function_import_violations("import json\n\ndef f():\n    return json\n") == []
