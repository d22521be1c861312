"""The layout README's "Layout" section describes: tuner/'s packages form layers, and every import points down.

A module may import its own package and the layers below it, never one above, and nothing imports a command.
Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [  # lowest first
    ("tuner.errors", "tuner.text", "tuner.outcome", "tuner.ranking", "tuner.files"),  # used everywhere
    ("tuner.config",),  # schema, space and study files, settings: no torch, no Ray
    ("tuner.ray_adaptations",),
    ("tuner.trial",),
    ("tuner.tracking",),
    ("tuner.report",),
    ("tuner.search",),
    ("tuner.study",),
]
COMMANDS = ("tuner.run", "tuner.train", "tuner.cluster", "tuner.study.__main__", "tuner.report.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return {name for name in found if name.startswith("tuner")}


def upward_imports(package_root: Path = ROOT / "tuner") -> list[str]:
    wrong = []
    for path in sorted(package_root.rglob("*.py")):
        module = module_name(path)
        if module in COMMANDS:
            continue
        own = layer(module)
        for name in sorted(imports(path)):
            if any(name == c or name.startswith(c + ".") for c in COMMANDS):
                wrong.append(f"{module} imports the command {name}")
            elif (target := layer(name)) is not None and own is not None and target > own:
                wrong.append(f"{module} ({LAYERS[own][0]}) imports {name} ({LAYERS[target][0]}), a layer above")
    return wrong


def test_every_module_is_in_a_layer_or_a_command():
    loose = [
        module_name(p)
        for p in (ROOT / "tuner").rglob("*.py")
        if layer(module_name(p)) is None and module_name(p) not in COMMANDS and module_name(p) != "tuner"
    ]
    assert loose == []


def test_imports_point_down():
    assert upward_imports() == []


def test_models_do_not_import_the_tuner():
    assert [str(p) for p in (ROOT / "models").rglob("*.py") if imports(p)] == []
