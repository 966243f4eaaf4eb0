"""Step texts that are guaranteed to parse back into the same steps.

Every later stage reads annotations with :func:`sicog.data.steps.split_steps`; a body with a line that
reads as a "Step N" marker would shift the steps it reads, and a horizontal rule would be dropped or end its step
early, so such a text is rejected here, at the source. (In the :func:`format_steps` layout every other
body parses back as written: the header sentence on the marker's line is the only line the reader removes.)
"""

from __future__ import annotations

from collections.abc import Sequence

from sicog.data.steps import format_steps, split_steps, step_markers
from sicog.data.text import blank


class StepFormatError(ValueError):
    """Step bodies that would not survive a format -> parse round trip."""


def format_checked_steps(headers: Sequence[str], bodies: Sequence[str]) -> str:
    """:func:`format_steps` of ``bodies``, after checking each is non-empty and parses back unchanged."""
    empty = [i for i, body in enumerate(bodies, start=1) if blank(body)]
    if empty:
        raise StepFormatError(f"empty step(s) {', '.join(map(str, empty))}")
    text = format_steps(headers, bodies)
    parsed = split_steps(text, headers)
    expected = {i: body.strip() for i, body in enumerate(bodies, start=1)}
    if parsed != expected:
        changed = sorted(i for i in set(parsed) | set(expected) if parsed.get(i) != expected.get(i))
        cause = (
            "a line of a body reads as a 'Step N' marker"
            if any(step_markers(body) for body in bodies)
            else "a horizontal rule in a body: the reader drops one at its start and ends the step at one after "
            "its text"
        )
        raise StepFormatError(f"step(s) {', '.join(map(str, changed))} would not parse back ({cause})")
    return text
