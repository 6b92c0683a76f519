"""Reading YAML we did not write: plain data only, bounded in size, and every problem one line.

`yaml.safe_load` already refuses tags that build Python objects, but it keeps aliases as shared references, so a
"billion laughs" file (each level a list of nine aliases of the one before) loads at once and then hangs whatever
walks it (validation, copying, printing). Here the composed node graph is measured before anything is built: the
number of values it expands to, counted once per path as a walker would see it (memoised per node, so measuring
costs the file's size, not the expansion's). Files are also refused when they are not UTF-8, nest too deeply for
the parser, or repeat a key in one mapping (YAML 1.2 forbids it; PyYAML silently keeps the last).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 4 * 1024 * 1024  # a run config or study is a few KB
MAX_VALUES = 100_000  # values after alias expansion; the largest shipped study has a few hundred
MAX_DEPTH = 64  # nesting of mappings and lists


class YAMLRefused(ValueError):
    """The text is not acceptable YAML for ablate: a one-line problem and, when known, its 1-based line."""

    def __init__(self, problem: str, line: int | None = None):
        super().__init__(problem)
        self.problem, self.line = problem, line

    def at(self, source: str | Path) -> str:
        """'<source>: line N: <problem>' (the one-line message ablate prints)."""
        return f"{source}:{f' line {self.line}:' if self.line else ''} {self.problem}"


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None and node.start_mark else None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: let PyYAML say so
                continue
            if repeated:
                raise YAMLRefused(f"the key {str(key)[:60]!r} appears twice in one mapping; keep one",
                                  _line(key_node))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(values, depth) of a node graph with every alias expanded, without expanding it (memoised per node)."""
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()  # expanded, children not finished: meeting one again is a recursive alias
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order: the parser's own nesting limit is far above Python's recursion limit
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if not children_done and id(node) in open_nodes:
            raise YAMLRefused("an alias refers to a value that contains it (a recursive alias); remove it",
                              _line(node))
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            sizes[id(node)] = (1, 0)
            continue
        if not children_done:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        values = 1 + sum(sizes[id(c)][0] for c in children)
        depth = 1 + max((sizes[id(c)][1] for c in children), default=0)
        sizes[id(node)] = (min(values, MAX_VALUES + 1), depth)  # capped: the count cannot grow without bound
    return sizes[id(root)]


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 but tab/newline/CR, DEL, C1


def control_character(text: str) -> str | None:
    """The first control character of `text` as an escape (e.g. '\\x1b'), None when it has none: such characters
    would reach the terminal (an ESC sequence retitles or clears it) or a file name from a config."""
    match = CONTROL.search(text)
    return None if match is None else repr(match.group())[1:-1]


def _refuse_control_in_values(data: Any, at: str = "") -> None:
    """Control characters written as YAML escapes ("\\x1b") in any key or string value: one line naming the key."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        where = f"{at}.{key}" if at else str(key)
        for text in (key, value):
            if isinstance(text, str) and control_character(text):
                raise YAMLRefused(f"{where}: contains the control character {control_character(text)}; "
                                  "configs hold printable text only")
        _refuse_control_in_values(value, where)


def parse(text: str) -> tuple[Any, yaml.Node | None]:
    """(data, root node) of a YAML text, or YAMLRefused with a one-line problem."""
    if len(text) > MAX_BYTES:
        raise YAMLRefused(f"{len(text):,} characters; a config or study is a few KB (limit {MAX_BYTES:,})")
    bad = CONTROL.search(text)
    if bad:
        raise YAMLRefused(f"contains the control character {repr(bad.group())[1:-1]} (column "
                          f"{bad.start() - text.rfind(chr(10), 0, bad.start())}); a YAML file holds printable "
                          "text only: remove it", text.count("\n", 0, bad.start()) + 1)
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        values, depth = expanded_size(root)
        if values > MAX_VALUES:
            raise YAMLRefused(f"its aliases (*name) expand to more than {MAX_VALUES:,} values; write the values "
                              "out or use fewer aliases")
        if depth > MAX_DEPTH:
            raise YAMLRefused(f"nested {depth} levels deep (limit {MAX_DEPTH}); flatten the file")
        data = loader.construct_document(root)
        _refuse_control_in_values(data)
        return data, root
    except RecursionError:
        raise YAMLRefused("nested too deeply to read; flatten the file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = " ".join(str(getattr(error, "problem", None) or error).split())[:200]
        raise YAMLRefused(f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()


def read_text(path: Path) -> str:
    """A file's text as UTF-8, or YAMLRefused naming what is wrong."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise YAMLRefused(f"{size:,} bytes; a config or study is a few KB (limit {MAX_BYTES:,})")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise YAMLRefused(f"not UTF-8 text (byte {error.start}); give a YAML file") from None
    except IsADirectoryError:
        raise YAMLRefused("a folder, not a file; give a YAML file") from None


def line_map(node: yaml.Node, path: tuple = (), out: dict[tuple, int] | None = None) -> dict[tuple, int]:
    """Key path -> 1-based line of each mapping key and sequence item (from the composed node tree)."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            try:  # keys typed as safe_load types them (a key `1` is an int), so paths match the loaded data
                key = yaml.SafeLoader("").construct_object(key_node, deep=True)
            except yaml.YAMLError:
                key = getattr(key_node, "value", None)
            if isinstance(key, (list, dict)):
                continue
            out[path + (key,)] = key_node.start_mark.line + 1
            line_map(value_node, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            line_map(item, path + (i,), out)
    return out
