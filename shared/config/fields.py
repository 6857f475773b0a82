"""Unknown keys in a config file: refused with the section they are in and a suggestion.

A misspelt key is worse than a wrong value: ``wal_spol`` on a postgres source, or
``apend_only`` on a target, would otherwise be dropped silently and the safety it asked
for would be off. msgspec's ``forbid_unknown_fields`` does this for the config-only
Structs of shared/config.py, but the source Structs (shared/wire/sources.py) are also wire
messages and manifest fields: they must keep ignoring unknown fields there, so that an
older agent still reads a job or a manifest written by a newer version (msgspec's
schema-evolution rule). So the loader walks the raw TOML against the types before
converting it, and every Struct reachable from the file's type is checked, whatever its
own options — a new section cannot forget it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

import msgspec.inspect as mi


class UnknownField(Exception):
    """``section`` holds ``field``, which its Struct does not have."""

    def __init__(self, section: str, field: str, known: list[str], kind: str | None) -> None:
        self.section = section
        self.field = field
        self.known = known
        self.kind = kind  # the ``type`` of a tagged section (a source, a target)
        close = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
        self.suggestion = close[0] if close else None
        super().__init__(self.line())

    def line(self) -> str:
        where = f"[{self.section}]" if self.section else "the top level"
        if self.kind:
            where += f' (type "{self.kind}")'
        path = f"{self.section}.{self.field}" if self.section else self.field
        if self.suggestion:
            hint = f"did you mean `{self.suggestion}`? (or remove it)"
        else:
            hint = f"remove it or fix its spelling (known: {', '.join(self.known)})"
        return f"field '{path}': unknown field `{self.field}` in {where}: {hint}"


def _join(path: str, part: str) -> str:
    if part.startswith("["):
        return path + part
    return f"{path}.{part}" if path else part


def check_unknown(raw: Any, t: mi.Type, path: str = "") -> None:
    """Raise UnknownField for the first key of ``raw`` that type ``t`` does not have.

    Values of the wrong shape are left alone: msgspec's conversion reports those."""
    if isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.StructType):
        if not isinstance(raw, dict):
            return
        fields = {f.encode_name: f for f in t.fields}
        allowed = set(fields) | ({t.tag_field} if t.tag_field else set())
        for key in raw:
            if key not in allowed:
                tag = str(t.tag) if t.tag_field is not None else None
                raise UnknownField(path, str(key), sorted(fields), tag)
        for key, value in raw.items():
            if key in fields:
                check_unknown(value, fields[key].type, _join(path, key))
    elif isinstance(t, mi.UnionType):
        for member in _pick(raw, t):
            check_unknown(raw, member, path)
    elif isinstance(t, mi.DictType) and isinstance(raw, dict):
        for key, value in raw.items():
            check_unknown(value, t.value_type, _join(path, str(key)))
    elif isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        if isinstance(raw, list):
            for i, item in enumerate(raw):
                check_unknown(item, t.item_type, _join(path, f"[{i}]"))


def _pick(raw: Any, t: mi.UnionType) -> Iterator[mi.Type]:
    """The union member ``raw`` would be converted to, when that is clear."""
    if isinstance(raw, dict):
        structs = [m for m in t.types if isinstance(m, mi.StructType)]
        if len(structs) == 1 and structs[0].tag_field is None:
            yield structs[0]
            return
        for s in structs:
            if s.tag_field is not None and raw.get(s.tag_field) == s.tag:
                yield s
                return
        dicts = [m for m in t.types if isinstance(m, mi.DictType)]
        if not structs and len(dicts) == 1:
            yield dicts[0]
    elif isinstance(raw, list):
        yield from (m for m in t.types if isinstance(m, mi.ListType))


Step = tuple[str, Any]  # ("key", name) | ("index", 0) | ("tag", (field, value))


def reachable_structs(t: mi.Type) -> Iterator[tuple[mi.StructType, list[Step]]]:
    """Every Struct type reachable from ``t``, with the steps that reach it from the top
    of a file (keys, list indices and the tags of tagged sections on the way): the tests
    use them to put an unknown key into every kind of section."""
    seen: set[type] = set()
    stack: list[tuple[mi.Type, list[Step]]] = [(t, [])]
    while stack:
        cur, steps = stack.pop()
        if isinstance(cur, mi.Metadata):
            cur = cur.type
        if isinstance(cur, mi.StructType):
            if cur.cls in seen:
                continue
            seen.add(cur.cls)
            if cur.tag_field is not None:
                steps = [*steps, ("tag", (cur.tag_field, cur.tag))]
            yield cur, steps
            stack.extend((f.type, [*steps, ("key", f.encode_name)]) for f in cur.fields)
        elif isinstance(cur, mi.UnionType):
            stack.extend((m, steps) for m in cur.types)
        elif isinstance(cur, mi.DictType):
            stack.append((cur.value_type, [*steps, ("key", "x")]))
        elif isinstance(cur, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
            stack.append((cur.item_type, [*steps, ("index", 0)]))
