"""Text that shows nothing: whitespace and the characters Unicode tells renderers to ignore."""

from __future__ import annotations

import regex

# Whitespace, controls and Default_Ignorable_Code_Point (zero-width spaces and joiners, the byte-order mark, soft
# hyphens, variation selectors, Hangul fillers, tags). Prepended concatenation marks (U+0600, U+06DD), which show, are
# not among them.
_INVISIBLE = regex.compile(r"[\s\p{Cc}\p{Default_Ignorable_Code_Point}]*")


def blank(text: str) -> bool:
    """Whether ``text`` shows nothing: only whitespace, controls and default-ignorable characters (a zero-width space
    or joiner, a byte-order mark), which ``str.strip`` keeps."""
    return _INVISIBLE.fullmatch(text) is not None
