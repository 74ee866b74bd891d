"""Reading the YAML files a user hands us (scenario configs, training settings) without trusting them.

``yaml.safe_load`` already refuses Python tags, but it accepts what a config must not be:

- aliases that expand to a huge document (the "billion laughs" file: a few hundred bytes of nested
  anchors that every later traversal, validation or error message walks as billions of nodes); the
  expanded document is measured before it is constructed and refused above ``MAX_NODES`` nodes;
- a key given twice (PyYAML keeps the last value, so the first one is silently lost);
- an empty or comment-only file (it loads as ``None``, which would read as "all defaults");
- files far larger than any config, and nesting deep enough to exhaust the recursion limit.

Every refusal is a :class:`YAMLInputError` whose message names the file and, where YAML gives one, the
line. Callers turn it into their own error type (``ConfigError``, ``SettingsError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES = 1 << 20  # a config is a few kB; a MiB leaves room for long hand-written fleets
MAX_NODES = 100_000  # scalars, lists and mappings in the document with every alias expanded
MAX_DEPTH = 64  # nesting; the deepest shipped config has 4 levels


class YAMLInputError(ValueError):
    """A YAML file cannot be used as a config; the message says why and where."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable key: let SafeLoader give its own error
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {_short(key)} (first at line {first.start_mark.line + 1}); "
                    "a key may appear only once", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expanded_size(root: Node) -> int:
    """Nodes in the document with every alias expanded, without expanding them: each distinct node's
    expanded size is computed once (aliases are shared node objects) and reused. Stops early above
    ``MAX_NODES`` and refuses nesting deeper than ``MAX_DEPTH``."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if depth > MAX_DEPTH:
            raise YAMLInputError(f"nesting deeper than {MAX_DEPTH} levels (line {node.start_mark.line + 1})")
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            sizes[id(node)] = 1
            continue
        if children_done:
            total = 1 + sum(sizes.get(id(child), 0) for child in children)
            if total > MAX_NODES:
                raise YAMLInputError(
                    f"the document expands to more than {MAX_NODES:,} values (aliases *name repeat what "
                    f"anchors &name hold; line {node.start_mark.line + 1}); a config is far smaller: "
                    "write the values out or use fewer aliases")
            sizes[id(node)] = total
            continue
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def load_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document from ``text`` (``source`` names it in errors); None is refused."""
    if len(text) > MAX_BYTES:
        raise YAMLInputError(f"{source} holds {len(text):,} characters; a config is a small YAML file "
                             f"(limit {MAX_BYTES:,})")
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader already refuses control characters here
        node = loader.get_single_node()
        if node is None:
            raise YAMLInputError(f"{source} is empty (or holds only comments); write the fields to set, "
                                 "e.g. 'n_nodes: 16', or leave the argument out for the defaults")
        _expanded_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YAMLInputError(f"{source} is not valid YAML: {_bounded(str(exc))}") from None
    except RecursionError:
        raise YAMLInputError(f"{source} nests too deeply to read (limit {MAX_DEPTH} levels)") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file: a directory, an unreadable file or one that is not UTF-8 text is a
    :class:`YAMLInputError` naming the path."""
    path = Path(path)
    source = f"config file {_bounded(str(path), 200)}"
    if path.is_dir():
        raise YAMLInputError(f"{source} is a directory, not a YAML file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise YAMLInputError(f"{source} cannot be read: {exc.strerror or exc}") from None
    if size > MAX_BYTES:
        raise YAMLInputError(f"{source} is {size:,} bytes; a config is a small YAML file (limit {MAX_BYTES:,})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise YAMLInputError(f"{source} is not UTF-8 text (byte {exc.start}); is it a YAML file?") from None
    except OSError as exc:
        raise YAMLInputError(f"{source} cannot be read: {exc.strerror or exc}") from None
    return load_yaml_text(text, source)


def _bounded(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
