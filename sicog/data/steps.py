"""Writing and reading step-by-step texts ("Step 1: ...", CoD's five steps, CoT's four).

The reader is lenient about how a step is marked, because it parses model output: "Step 5: ...",
"**Step 5**:", "**Step 5:** ...", "**Step 5: Header**", "**Step 5: Header**: ...", "__Step 5: Header__",
"Step 5 -", "### Step 5. Header" followed by the text on the next line, any case. It never edits the text of a
step: it removes only the marker with its own decoration, where there is one the step's header line, and
horizontal rules: those before a step's text, and one after it with everything that follows (see
:func:`split_steps`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Spaces and separators as models write them in any script: a no-break or ideographic space, a full-width colon,
# period or bracket ("Step 1\uff1a") as the ASCII ones; CJK text ends its sentences with full-width marks.
FULL_WIDTH_SENTENCE_ENDS = "\u3002\uff01\uff1f"  # 。！？
_SPACE = r"[ \t\u00a0\u3000]"
_SEPARATOR = r"[:.)\-\u2013\u2014\uff1a\uff0e\uff09]"
# A step marker at a line start: heading marks, quote or list bullet ("lead"), the emphasis that opens
# right at "Step" ("open"), the number, emphasis closed before the separator ("close"), the separator.
# Emphasis closed after the separator ("**Step 1:** text") is resolved in code: the regex cannot tell it
# from emphasis that opens the body ("Step 1: *Grand Opening* ...").
_MARKER = re.compile(
    rf"^(?P<lead>[ \t#>*_-]*?)(?P<open>\**|_*)step{_SPACE}*(?P<number>\d+){_SPACE}*(?P<close>\**|_*){_SPACE}*"
    rf"{_SEPARATOR}?{_SPACE}*",
    re.IGNORECASE | re.MULTILINE,
)
# A step marker after other text on its line ("... Step 4: ..."), as models also write them: at the space before it,
# or right after a sentence's end without one (CJK text takes no space after its marks: "\u3002Step 2\uff1a").
_INLINE_MARKER = re.compile(
    rf"(?:(?<=\S){_SPACE}+|(?<=[.!?;\uff1b{FULL_WIDTH_SENTENCE_ENDS}]){_SPACE}*)"
    rf"(?=\**{_SPACE}*step{_SPACE}*\d+{_SPACE}*\**{_SPACE}*{_SEPARATOR})",
    re.IGNORECASE,
)
# A Markdown heading line: "## Salient content".
_HEADING_LINE = re.compile(r"^#{1,6}[ \t]")
# A line that is one bold span: "**Salient content**", "__Salient content__:".
_BOLD_LINE = re.compile(r"^(\*\*|__)(?:(?!\1).)+\1[:.]?$")
# A Markdown horizontal rule, a line of its own ("---", "* * *"): models copy the published prompt's rules between
# steps, and write closing remarks after one. Rules before a body's text are the reply's separators under a header
# and are dropped; a rule after its text ends the body.
_RULE = r"[ \t]*(?:-(?:[ \t]*-){2,}|\*(?:[ \t]*\*){2,}|_(?:[ \t]*_){2,})[ \t]*\r?(?=\n|\Z)"
_LEADING_RULES = re.compile(rf"\A(?:\s*{_RULE})+\s*")
_RULE_AFTER_TEXT = re.compile(rf"\n{_RULE}")
# A line that ends as a sentence does, its emphasis aside, or states something after a colon ("Answer: B"): text,
# not a title. A full-width sentence mark or colon takes no space after it.
_SENTENCE = re.compile(rf"[.!?{FULL_WIDTH_SENTENCE_ENDS}][*_]*$|(?::[*_]*[ \t]+|\uff1a[*_]*[ \t]*)[^\s*_]")
# What may decorate a header line before its text: heading marks and emphasis.
_HEADER_LEAD = re.compile(r"^[#*_ \t\u00a0\u3000]*")


def format_steps(headers: Sequence[str], bodies: Sequence[str]) -> str:
    """``Step i: header`` then the body on the next line, steps separated by a blank line."""
    if len(headers) != len(bodies):
        raise ValueError(f"{len(headers)} step headers but {len(bodies)} bodies")
    return "\n\n".join(f"Step {i}: {h}\n{b.strip()}" for i, (h, b) in enumerate(zip(headers, bodies), start=1))


def step_markers(text: str) -> list[int]:
    """The numbers of the step markers :func:`split_steps` finds in ``text``, in the order they stand."""
    return [int(match.group("number")) for match in _MARKER.finditer(text)]


def split_steps(text: str, headers: Sequence[str] = ()) -> dict[int, str]:
    """Map step number -> body text, the body as written (stripped) but for its header line, the rules before its
    text, and a rule after its text with what follows.

    The header line is the text after the marker on the marker's line or, when the marker stands alone
    on its line, the next non-empty line. It is removed when

    - it starts with the step's known header sentence (``headers[N - 1]``; any case, the final period
      optional, heading marks and emphasis aside); text after the sentence on that line stays, or
    - it is styled as a heading and more text follows: the marker is a Markdown heading
      (``### Step 1: Salient content``), the marker's own emphasis closes around it (``**Step 1: Salient
      content**``, ``__Step 1: Title__:``; text after the closing emphasis on that line is the body:
      ``**Step 1: Title**: text``), or the line is a Markdown heading or one bold span.

    A body ends at the next marker or at a horizontal rule after its text ("---", "* * *" on a line of its own),
    whatever follows the rule; rules before its text are dropped. A line styled as a heading with a rule under it is
    the step's header only when it reads as a title: one that ends as a sentence or states something after a colon
    ("**The answer is B.**" or "**Answer: B**", then "---" and a closing remark) is the step's text.
    Any other first line is body text, also one that ends in ":". Emphasis is removed only where it
    belongs to the marker (``**Step 1:**``, ``**Step 1: ...**``) or to a removed header, never from the body.
    When a step number occurs twice, the first occurrence wins; text before the first marker is ignored.
    """
    matches = list(_MARKER.finditer(text))
    steps: dict[int, str] = {}
    for i, match in enumerate(matches):
        number = int(match.group("number"))
        if number not in steps:
            steps[number] = _body_at(text, matches, i, headers)
    return steps


def _body_at(text: str, matches: Sequence[re.Match[str]], i: int, headers: Sequence[str]) -> str:
    """The body of the step whose marker is ``matches[i]`` (the markers of ``text``, in order)."""
    match, number = matches[i], int(matches[i].group("number"))
    end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
    header = headers[number - 1] if 0 < number <= len(headers) else None
    body = _LEADING_RULES.sub("", _step_body(match, text[match.end() : end], header))
    rule = _RULE_AFTER_TEXT.search(body)
    return body[: rule.start()].rstrip() if rule else body


def _step_body(marker: re.Match[str], raw: str, header: str | None) -> str:
    """The body of one step: ``raw`` (the text after ``marker``) without the marker's emphasis and header line."""
    line, _, after = raw.partition("\n")
    # Emphasis opened at "Step" and not closed before the separator is still open here.
    opened, closed = marker.group("open"), marker.group("close")
    pending = opened[len(closed) :]
    if pending and re.match(re.escape(pending) + rf"(?:{_SPACE}|$)", line):
        line, pending = line[len(pending) :], ""  # "**Step 1:** text"
    styled = "#" in marker.group("lead")
    title, closes, rest = line.partition(pending) if pending else ("", "", "")
    if closes:  # the marker's emphasis closes on this line, after a title (the body may have bold of its own)
        # A separator, not a sign or point of the text ("-3", "-x", ".5"): "-" and "." only before a space or capital.
        rest = rest[re.match(r"[ \t]*(?:[:\u2013\u2014\uff1a]|[.\-](?=\s|$|[A-Z]))?[ \t]*", rest).end() :]
        if rest.strip():
            return (rest + "\n" + after).strip()  # "**Step 1: Title** text", "**Step 1: Title**: text"
        line, pending, styled = title, "", True  # "**Step 1: Salient content**", "__Step 1: Title__:"
    if not line.strip():
        # The marker stands alone on its line: a header would be the next non-empty line.
        line, _, after = _LEADING_RULES.sub("", after.strip()).partition("\n")
        styled, pending = False, ""
    first = line.strip()
    if header is not None:
        remainder = _after_header(first, header, pending)
        if remainder is not None:
            return (remainder + "\n" + after).strip()
    styled = styled or bool(_HEADING_LINE.match(first) or _BOLD_LINE.match(first))
    # A styled line with a rule under it is a header only if it reads as a title: "**The answer is B.**", "---", a
    # closing remark is a step whose text the rule ends.
    if styled and after.strip() and not (_LEADING_RULES.match(after) and _SENTENCE.search(first)):
        return after.strip()
    return (first + "\n" + after).strip()


def _after_header(line: str, header: str, pending: str) -> str | None:
    """What follows ``header`` on ``line``, or None when the line does not start with it.

    ``pending`` is emphasis opened before the line (by the marker) that may close after the header.
    """
    lead = _HEADER_LEAD.match(line).group()
    text = line[len(lead) :]
    sentence = header.rstrip(".")
    if not text.lower().startswith(sentence.lower()):
        return None
    remainder = text[len(sentence) :]
    if remainder[:1].isalnum():
        return None  # a longer word or sentence that merely starts like the header
    # The header's own decoration: its period, the emphasis it was wrapped in, a separator.
    closer = pending + "".join(char for char in lead if char in "*_")
    decoration = re.match(rf"\.?(?:{re.escape(closer)})?\.?[ \t]*(?:[:\-\u2013\u2014\uff1a][ \t]*)?", remainder)
    return remainder[decoration.end() :]


def final_step(text: str, step: int, headers: Sequence[str] = ()) -> tuple[str, bool]:
    """The body of ``step`` and whether it was found; the whole text (stripped) when it was not."""
    matches = list(_MARKER.finditer(text))
    # The step's first marker, as in split_steps; the other steps' bodies are not built (curation reads millions).
    first = _first(matches, step)
    body = _body_at(text, matches, first, headers) if first is not None else ""
    if body:
        return body, True
    return text.strip(), False


def break_inline_markers(text: str) -> str:
    """``text`` with each step marker written after other text on its line moved to the start of a line of its
    own, where the readers here look for markers ("Step 1: A dog. Step 2: ..." -> two lines)."""
    return _INLINE_MARKER.sub("\n", text)


def inline_steps(text: str, last: int) -> str | None:
    """:func:`break_inline_markers` of ``text`` when its markers then open with steps 1 to ``last`` in order, a
    chain of steps written on one line; else None: "The answer is C. Step 4: the water boils." names a step of
    something else."""
    broken = break_inline_markers(text)
    return broken if step_markers(broken)[:last] == list(range(1, last + 1)) else None


def step_start(text: str, step: int) -> int | None:
    """Where the first marker of ``step`` ends in ``text`` (None without one): what follows is that step and any
    after it."""
    matches = list(_MARKER.finditer(text))
    first = _first(matches, step)
    return None if first is None else matches[first].end()


def _first(matches: Sequence[re.Match[str]], step: int) -> int | None:
    return next((i for i, match in enumerate(matches) if int(match.group("number")) == step), None)
