"""The YAML files users write (search spaces, studies): read with duplicate keys refused, found by path or by the
name of a shipped one; a file that cannot be read or parsed fails with one line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tuner.errors import SpaceError

if TYPE_CHECKING:
    from tuner.config.space import SpaceProblems


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (YAML silently keeps the last) and reads 1e-5 as a number
    (YAML 1.1 reads it as text: only 1.0e-5 is a float)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key_node.value}'", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def shipped(folder: Path) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.yaml"))


def find_file(name_or_path: str, folder: Path, kind: str) -> Path:
    """A path to an existing file, or the name of a shipped one (`folder`/<name>.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.name == name_or_path and (folder / f"{name_or_path}.yaml").is_file():
        return folder / f"{name_or_path}.yaml"
    raise SpaceError(
        f"{name_or_path}: no such {kind} file or name; allowed: a YAML file path or one of {', '.join(shipped(folder))}"
    )


def read_yaml(path: Path, file: SpaceProblems) -> tuple:
    """(the text, the YAML data) of a file; one that cannot be read or parsed fails through `file` (a
    tuner.config.space.SpaceProblems, which names the file) with one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        file.fail("file", f"cannot be read: {error}")
    return text, parse_yaml(text, file)


def parse_yaml(text: str, file):
    """The YAML data of `text`, or one line through `file` naming where it cannot be parsed."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        file.fail(f"line {mark.line + 1}" if mark else "file", f"YAML syntax error: {error.problem}")
    except yaml.YAMLError as error:
        file.fail("file", f"cannot be read: {error}")
