"""The protocol cores never do I/O: modules that declare ``PURE_CORE = True``
must not import trio, capnp, socket, os, time or random at module level, and
may import project modules only if those are pure cores too."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "trio", "capnp", "socket", "os", "time", "random", "asyncio", "threading",
    "subprocess", "shutil", "pathlib", "select", "selectors", "signal",
}
PROJECT = {"server", "rpc", "fusefs"}


def _module_imports(tree: ast.Module) -> list[str]:
    """Imports executed when the module is imported: top level, including
    inside module-level if/try blocks, but not inside functions or classes."""
    found = []
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.append(base)
            # `from pkg import sub` may name a submodule: check it as one too.
            sep = "" if base.endswith(".") or not base else "."
            found.extend(base + sep + alias.name for alias in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []) or []:
                    stack.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return found


def _is_pure(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PURE_CORE" for t in node.targets
        ):
            return isinstance(node.value, ast.Constant) and node.value.value is True
    return False


def _resolve(module: str, importer: str) -> str:
    if not module.startswith("."):
        return module
    level = len(module) - len(module.lstrip("."))
    base = importer.split(".")[:-level]
    rest = module.lstrip(".")
    return ".".join(base + ([rest] if rest else []))


def violations(sources: dict[str, str]) -> list[str]:
    """sources maps dotted module name -> source text; returns problems found."""
    trees = {name: ast.parse(text) for name, text in sources.items()}
    pure = {name for name, tree in trees.items() if _is_pure(tree)}
    problems = []
    for name in sorted(pure):
        for imported in _module_imports(trees[name]):
            full = _resolve(imported, name if not name.endswith("__init__") else name + ".x")
            root = full.split(".")[0]
            if root in FORBIDDEN:
                problems.append(f"{name} imports {full}")
            elif root in PROJECT:
                is_module = full in trees or full + ".__init__" in trees
                if is_module and not ({full, full + ".__init__"} & pure) and full not in PROJECT:
                    problems.append(f"{name} imports non-pure project module {full}")
    return problems


def _project_sources() -> dict[str, str]:
    out = {}
    for pkg in PROJECT:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            out[".".join(rel.parts)] = path.read_text()
    return out


def test_pure_cores_import_no_io():
    assert violations(_project_sources()) == []


@pytest.mark.parametrize(
    "line",
    ["import os", "import trio", "from time import monotonic", "import random",
     "try:\n    import capnp\nexcept ImportError:\n    pass", "import socket as s"],
)
def test_checker_catches_forbidden_imports(line):
    src = f"PURE_CORE = True\n{line}\n"
    assert violations({"server.fake": src}) != []


def test_checker_allows_imports_inside_functions_and_pure_neighbours():
    core = "PURE_CORE = True\nfrom server import other\ndef f():\n    import os\n"
    other = "PURE_CORE = True\nimport dataclasses\n"
    assert violations({"server.core": core, "server.other": other}) == []
    impure = "import os\n"
    assert violations({"server.core": core, "server.other": impure}) != []
