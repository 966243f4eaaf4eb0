"""Writing and reading step-by-step texts ("Step 1: ...", CoD's five steps, CoT's four).

The reader is lenient because it parses model output: "Step 5: ...", "**Step 5**:", "Step 5 -",
"### Step 5. Header" followed by the text on the next line, any case.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_MARKER = re.compile(
    r"^[ \t#>*_-]*\**[ \t]*step[ \t]*(\d+)[ \t]*\**[ \t]*[:.)\-\u2013\u2014]?[ \t]*\**[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)


def format_steps(headers: Sequence[str], bodies: Sequence[str]) -> str:
    """``Step i: header`` then the body on the next line, steps separated by a blank line."""
    if len(headers) != len(bodies):
        raise ValueError(f"{len(headers)} step headers but {len(bodies)} bodies")
    return "\n\n".join(f"Step {i}: {h}\n{b.strip()}" for i, (h, b) in enumerate(zip(headers, bodies), start=1))


def split_steps(text: str, headers: Sequence[str] = ()) -> dict[int, str]:
    """Map step number -> body text. A known header (or a header line ending in ':') is removed.

    When a step number occurs twice, the first occurrence wins; text before the first marker is ignored.
    """
    matches = list(_MARKER.finditer(text))
    steps: dict[int, str] = {}
    for i, match in enumerate(matches):
        number = int(match.group(1))
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip().strip("*").strip()
        if number in steps:
            continue
        steps[number] = _drop_header(body, headers[number - 1] if 0 < number <= len(headers) else None)
    return steps


def _drop_header(body: str, header: str | None) -> str:
    first, _, rest = body.partition("\n")
    first_clean = first.strip().strip("*#").strip()
    if header and first_clean.lower().startswith(header.lower().rstrip(".")):
        remainder = first_clean[len(header.rstrip(".")) :].lstrip(".:*- \t")
        return (remainder + ("\n" + rest if rest else "")).strip()
    if rest and first_clean.endswith(":"):
        return rest.strip()
    return body


def final_step(text: str, step: int, headers: Sequence[str] = ()) -> tuple[str, bool]:
    """The body of ``step`` and whether it was found; the whole text (stripped) when it was not."""
    body = split_steps(text, headers).get(step)
    if body:
        return body, True
    return text.strip(), False
