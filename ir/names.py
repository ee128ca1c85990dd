"""Fresh names: the one helper every stage uses to pick a name no other symbol in scope has."""

from __future__ import annotations

from collections.abc import Container


def fresh_name(base: str, used: set[str], avoid: Container[str] = (), sep: str = "_") -> str:
    """`base`, else `base{sep}1`, `base{sep}2`, ...: the first not in `used` or `avoid`; added to `used`."""
    name, i = base, 0
    while name in used or name in avoid:
        i += 1
        name = f"{base}{sep}{i}"
    used.add(name)
    return name
