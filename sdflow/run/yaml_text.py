"""YAML text of mappings that differ little from one to the next, each key's block emitted once per value.

A sweep writes, for every job, YAML that is mostly the same as the job before's: the workflow as it ran (one
node's seed differs), Hydra's config files (a value or two). A block-style mapping's text is its keys' blocks
one after the other, so a key whose value equals the one seen last reuses that block's text; only the keys
that changed are emitted (tests/test_sweep_configs.py and tests/test_outputs.py hold the text equal to a
whole dump's).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import yaml


def _exactly(value: Any) -> Any:
    """A value compared exactly: 1, 1.0 and True are equal in Python and three things in YAML."""
    if isinstance(value, dict):
        return tuple((key, _exactly(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return (type(value),) + tuple(_exactly(item) for item in value)
    return type(value), value


class YamlBlocks:
    """``yaml.dump(mapping, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)``, with
    each key's block kept (at most ``keep`` of them) and emitted again only when its value changes.

    ``under``: the mapping is the value of that one top-level key (``hydra:`` of hydra.yaml, ``nodes:`` of a
    workflow); its blocks are indented beneath it as a whole dump would.
    """

    def __init__(self, dumper: type, keep: int = 4096):
        self.dumper, self.keep = dumper, keep
        self.blocks: OrderedDict[tuple[str | None, str], tuple[Any, str]] = OrderedDict()

    def _dump(self, data: dict) -> str:
        return yaml.dump(data, Dumper=self.dumper, default_flow_style=False, allow_unicode=True, sort_keys=False)

    def dump(self, mapping: dict, under: str | None = None) -> str:
        if not mapping:
            return self._dump({under: mapping} if under is not None else mapping)
        head = f"{under}:\n" if under is not None else ""
        parts = [head]
        for key, value in mapping.items():
            kept = self.blocks.get((under, key))
            exact = _exactly(value)
            if kept is None or kept[0] != exact:
                text = self._dump({under: {key: value}} if under is not None else {key: value})[len(head):]
                kept = (exact, text)
                self.blocks[(under, key)] = kept
                while len(self.blocks) > self.keep:
                    self.blocks.popitem(last=False)
            parts.append(kept[1])
        return "".join(parts)
