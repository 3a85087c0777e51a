"""YAML that people write (specs, search space files), read within bounds.

A YAML alias repeats the value its anchor names without repeating its text, so aliases of
aliases multiply: a 1 KB file can stand for gigabytes once a program walks it as plain data
(copies it, prints it in a message). Such a file, one nested deeper than anyone writes, one
with a value that contains itself (``&a [*a]``) or one over :data:`MAX_YAML_BYTES` is refused
with one message before any value is built; anchors, aliases and merge keys (``<<: *base``)
within the bounds work as YAML says. A key given twice in one mapping is refused too (YAML
would keep the last silently, so ``epochs: 2`` above ``epochs: 30`` would be ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

__all__ = [
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_VALUES",
    "BoundedYamlError",
    "load_bounded_yaml",
    "read_bounded_yaml",
]

#: Largest file read: far above any spec or space (the presets are under 3 KB).
MAX_YAML_BYTES: Final = 1 << 20
#: Most values (scalars, lists, mappings) a document may hold with its aliases expanded.
MAX_YAML_VALUES: Final = 100_000
#: Deepest nesting of lists and mappings (a spec nests 5 levels at most).
MAX_YAML_DEPTH: Final = 32


#: Longest number written; Python refuses to print an int of over 4300 digits.
_MAX_NUMBER_CHARS: Final = 100
_NUMBER_TAGS: Final = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class BoundedYamlError(ValueError):
    """YAML that cannot be read or lies out of bounds; the message completes "``<file>`` ..."
    (``is not valid YAML at line 3, column 7: ...``, ``must be at most ...``)."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python objects) that refuses a key given twice in a mapping."""


def _unique_keys_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base` may be overridden key by key; that is its purpose
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # unhashable: construct_mapping reports it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                "YAML would keep only the last value; the first is",
                first,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys_mapping)


def _where(mark: yaml.Mark | None) -> str:
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"


def _syntax_problem(error: yaml.YAMLError) -> str:
    """Where the YAML broke: line and column, what was found, and where the construct it was
    reading started when that is elsewhere."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if not isinstance(error, yaml.MarkedYAMLError) or mark is None or problem is None:
        return f"is not valid YAML: {' '.join(str(error).split())}"
    detail = " ".join(problem.split())
    context, start = error.context, error.context_mark
    if context and start is not None and (start.line, start.column) != (mark.line, mark.column):
        detail += f" ({context}{_where(start)})"
    return f"is not valid YAML{_where(mark)}: {detail}"


class _OutOfBoundsError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _too_deep(mark: yaml.Mark | None) -> _OutOfBoundsError:
    return _OutOfBoundsError(
        f"must nest lists and mappings at most {MAX_YAML_DEPTH} levels deep, got deeper"
        + _where(mark)
    )


def _check_bounds(root: yaml.Node) -> None:
    """Raise :class:`_OutOfBoundsError` when ``root``, aliases expanded, holds more values than
    :data:`MAX_YAML_VALUES`, nests deeper than :data:`MAX_YAML_DEPTH` or contains itself.

    An alias is the very node of its anchor, so sizes are counted once per node and summed
    where they are used: the cost follows the text, whatever the aliases multiply.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels below it)
    open_nodes: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_YAML_DEPTH:
            raise _too_deep(node.start_mark)
        key = id(node)
        if key in measured:
            values, below = measured[key]
            if depth + below > MAX_YAML_DEPTH:  # an alias reached it deeper than its anchor
                raise _too_deep(node.start_mark)
            return values, below
        if key in open_nodes:
            raise _OutOfBoundsError(
                f"must not hold a value that contains itself, got an alias to its own anchor"
                f"{_where(node.start_mark)}"
            )
        children: list[yaml.Node] = []
        if isinstance(node, yaml.ScalarNode) and node.tag in _NUMBER_TAGS:
            if len(node.value) > _MAX_NUMBER_CHARS:  # int("9" * 5000) refuses; 1:2:...:9 not
                raise _OutOfBoundsError(
                    f"must write each number in at most {_MAX_NUMBER_CHARS} characters, got "
                    f"one of {len(node.value)}{_where(node.start_mark)}"
                )
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        open_nodes.add(key)
        values, below = 1, 0
        for child in children:
            child_values, child_below = measure(child, depth + 1)
            values += child_values
            below = max(below, child_below + 1)
            if values > MAX_YAML_VALUES:
                raise _OutOfBoundsError(
                    f"must hold at most {MAX_YAML_VALUES} values with its aliases (*name) "
                    f"expanded, got more{_where(node.start_mark)}"
                )
        open_nodes.discard(key)
        measured[key] = (values, below)
        return values, below

    measure(root, 1)


def load_bounded_yaml(text: str) -> object:
    """The YAML document ``text`` as plain data; :class:`BoundedYamlError` if it is not
    valid YAML, gives a key twice, or lies out of bounds (the message says which)."""
    try:
        loader = _StrictLoader(text)  # its reader refuses control characters right away
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        code = error.character if isinstance(error.character, int) else ord(error.character)
        raise BoundedYamlError(
            f"is not valid YAML at line {line}, column {column}: found character U+{code:04X}, "
            "which YAML does not allow"
        ) from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # PyYAML composes nested values recursively
            raise _too_deep(None) from None
        if node is None:
            return None
        _check_bounds(node)
        try:
            return loader.construct_document(node)
        except ValueError as error:  # a scalar its type refuses: `2020-13-45` is no date
            detail = " ".join(str(error).split())
            message = f"is not valid YAML: a value its type refuses ({detail})"
            raise BoundedYamlError(message) from None
    except yaml.YAMLError as error:
        raise BoundedYamlError(_syntax_problem(error)) from None
    except _OutOfBoundsError as error:
        raise BoundedYamlError(error.message) from None
    finally:
        loader.dispose()


def read_bounded_yaml(file: Path) -> tuple[str, object]:
    """The text of YAML file ``file`` and its data; :class:`BoundedYamlError` if it cannot
    be read, is over :data:`MAX_YAML_BYTES`, is not UTF-8 or not valid, bounded YAML."""
    try:
        size = file.stat().st_size
        if size > MAX_YAML_BYTES:
            raise BoundedYamlError(
                f"must be at most {MAX_YAML_BYTES} bytes (1 MiB) of YAML, got {size} bytes"
            )
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise BoundedYamlError(
            f"must be UTF-8 text, got byte {error.object[error.start]:#04x} at offset {error.start}"
        ) from None
    except OSError as error:
        raise BoundedYamlError(f"cannot be read: {error.strerror or error}") from None
    return text, load_bounded_yaml(text)
