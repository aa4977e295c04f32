"""Reading a recipe's YAML safely: PyYAML's safe loader, refusing a key given twice in one mapping, and bounding what
the text may expand to, so a few hundred bytes of nested aliases (a "billion laughs") or a self-referring alias is one
clear error instead of a hang or a crash."""

from __future__ import annotations

from typing import Any

import yaml

from search.errors import ConfigError

MAX_VALUES = 100_000  # values a recipe may expand to, each alias counted at the full size of what it names
MAX_DEPTH = 64  # levels of nested mappings and lists; a recipe needs fewer than ten


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _children(node: yaml.Node) -> list[tuple[str, yaml.Node]]:
    """The nodes inside `node`, each with the key or index that names it."""
    if isinstance(node, yaml.SequenceNode):
        return [(str(i), child) for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        return [(str(getattr(key, "value", "?")), part) for key, value in node.value for part in (key, value)]
    return []


def _where(node: yaml.Node, path: tuple[str, ...]) -> str:
    """`space.kwargs.a (line 7)`: the key path of a node (its first few keys) and its line."""
    keys = ".".join(path[:6]) + (".…" if len(path) > 6 else "")
    return f"{keys or '(top level)'} (line {_line(node)})"


def expanded_size(
    node: yaml.Node, sizes: dict[int, int] | None = None, inside: tuple[int, ...] = (), path: tuple[str, ...] = ()
) -> int:
    """How many values `node` stands for once every alias in it is written out (each anchored node is counted
    once, by identity, so this is quick however large the expansion); a ConfigError where that exceeds
    `MAX_VALUES`, where an alias names a node it is inside of, or where nesting goes deeper than `MAX_DEPTH`."""
    sizes = {} if sizes is None else sizes
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in inside:
        raise ConfigError(f"{_where(node, path)}: an alias refers to the mapping or list it is part of, which "
                          "would never end; write the values out")
    if len(inside) >= MAX_DEPTH:
        raise ConfigError(f"{_where(node, path)}: nested more than {MAX_DEPTH} levels deep; a recipe needs only a few")
    size = 1
    for label, child in _children(node):
        size += expanded_size(child, sizes, (*inside, key), (*path, label))
        if size > MAX_VALUES:
            raise ConfigError(
                f"{_where(node, path)}: its aliases expand to more than {MAX_VALUES:,} values; a recipe needs a few "
                "hundred, so write the values out instead of aliasing aliases"
            )
    sizes[key] = size
    return size


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a mapping with a key given twice (PyYAML would keep the last) and a
    document that aliases expand beyond `MAX_VALUES` values (see `expanded_size`)."""

    def construct_document(self, node: yaml.Node) -> Any:
        """The document's data, once its expanded size is known to be bounded."""
        expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping of `node`; a repeated key is a ConfigError with both line numbers."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = _line(key_node)
            if key in seen:
                raise ConfigError(
                    f"{key}: given twice in one mapping (line {seen[key]} and line {line}); keep one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """YAML text as plain data, refusing duplicate keys, runaway aliases and runaway nesting (a ConfigError; a
    syntax error stays a `yaml.YAMLError`)."""
    try:
        return yaml.load(text, Loader=RecipeLoader)
    except RecursionError:
        raise ConfigError(f"nested more than {MAX_DEPTH} levels deep; a recipe needs only a few") from None
