"""YAML text in and out, safely: no Python objects, no duplicate keys, no alias bombs.

A recipe or manifest is read with PyYAML's SafeLoader (it constructs plain values only), with
two more refusals: a key written twice in one mapping (both line numbers named), and a
document whose aliases expand past `MAX_NODES` values (nine levels of nine-way anchors fit in
700 bytes and would make every later walk over the value take hours).
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import RecipeError

MAX_NODES = 100_000  # a recipe has about a hundred values, the largest manifest a few thousand


class _Loader(yaml.SafeLoader):
    """SafeLoader (no Python objects) that refuses a key written twice in one mapping."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key (a list as a key): SafeLoader says so itself
            continue
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice (lines {first} and "
                f"{key_node.start_mark.line + 1})", key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def expanded_size(node: yaml.Node, limit: int = MAX_NODES) -> int:
    """How many values a composed document holds once every alias is expanded (stops past limit)."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node, depth: int = 0) -> int:
        if id(n) in sizes:  # an alias is the same node object: count it again, walk it once
            return sizes[id(n)]
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v, depth + 1) for v in n.value)
        else:
            total = 1
        sizes[id(n)] = total = min(total, limit + 1)
        return total

    return size(node)


def parse_yaml(text: str, source: str, max_nodes: int = MAX_NODES) -> Any:
    """YAML text to builtins (safe, duplicate keys and alias bombs refused), or one line naming `source`."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if expanded_size(node, max_nodes) > max_nodes:
                raise RecipeError(f"{source}: its aliases (*name) expand to more than "
                                  f"{max_nodes:,} values; expected a recipe or manifest written "
                                  f"out plainly")
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise RecipeError(f"{source}: not valid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:
        raise RecipeError(f"{source}: not valid YAML: nested too deeply for a recipe") from None


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes lists inline (`orders: [1, 2, 3, 4]`) but sections as blocks."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v,
                                                                flow_style=True))


def dump_yaml(value: Any) -> str:
    """YAML text of plain values, keys in the order given, lists inline."""
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False)
