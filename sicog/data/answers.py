"""Reading the final answer out of a reply: the project's one set of rules, used by evaluation, by curation's
answer agreement and by the toy world's scorer, so that they never disagree on what a reply answered.

- **Where the answer is**: from structured-CoT step 4 on when the reply has the steps (a marker in steps 1-3
  is reasoning, not the conclusion; one in a step 5 of a longer reply counts; steps may be written on one
  line), else in the whole reply: after
  its last marker ("the answer is", "answer:", "the answer to the question would be", "**Final answer:**",
  "the correct option is", "the best choice would be", "the answer, therefore, is", "### Answer" above it, ...;
  not "this answer is", nor one followed by "not" where another marker answers), its last verdict opening and
  ending its sentence ("Option B is correct.": the letter) or its last ``\\boxed{X}``, on that line or the next
  non-empty one; without a marker, the body of step 4, else all of it.
- **The answer phrase** (for comparing answers): that text cut at the end of its first sentence and
  before ", because ..." (or "because"/"since" without the comma); without a marker, its last sentence. A
  period after a common abbreviation ("Mr. Smith", "St. Louis", "e.g.") or after an initial inside a name
  ("John F. Kennedy") ends no sentence; a letter opening the phrase is an option letter and ends it
  ("B. Because ..." -> "B"), but a last sentence that gives its letter a verdict against it ("D: incorrect.")
  answers nothing.
- **Normalisation**: Unicode NFKC (full-width "３" -> "3"), the ideographic full stop and comma as "." and ",";
  an answer followed by itself in brackets in other words ("3 (three)") -> the answer; lower case; option
  letters "(B)", "B.", "B)", "B", "option B" -> "b" (whatever follows a parenthesised letter is dropped);
  "yes"/"no" alone or before punctuation ("No, it is not.") -> "yes"/"no" ("no parking" stays a phrase); the
  minus sign "\u2212" -> "-"; number words zero to ninety-nine -> digits ("twenty-one" -> "21"), "1,000" ->
  "1000", "3.0" -> "3", "3.50" -> "3.5"; capital initials written with periods joined ("U.S.A." -> "usa");
  "grey" -> "gray"; punctuation, symbols and the articles a, an, the removed (words keep their combining marks);
  whitespace collapsed. Units are kept ("3 cubes" != "3").
- **Multiple choice**: "B", "(B)", "B.", "B) red", "Option B", "The answer is b", "B because ...", a capital
  "B" alone on its line above an explanation that names no other option's letter, or the option's own text
  ("red", "The colour is red."); without a marker, the one option chosen in the last sentence naming any (by
  its text, or by a capital letter that follows no word but "is", "with", "so", "not", ...: "vitamin C" names no
  option; after an option list, if the reply repeats one), where a clause that rejects or entertains an option
  ("not blue", "A is wrong", "it might look like blue") chooses nothing, and no earlier sentence chose another;
  a reply ending by declining ("I cannot tell.") chooses nothing. Replies that name two options ("A or B", "A, B
  or C", "B. blue" when blue is A, an echoed option list "A. blue, B. red") choose nothing; a lone lower-case
  letter needs a mark around it (the article "a" is not option A). Symbols, which normalisation removes, compare
  as written.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

import regex

from sicog.data.prompts import COT_STEPS
from sicog.data.steps import FULL_WIDTH_SENTENCE_ENDS, final_step, inline_steps, step_start

# "The answer is", "answer:", "the correct answer here is", "the answer, therefore, is", "the answer is clearly",
# "Answer - B"; not "this answer is" (a remark on an answer given before).
_MARKER = re.compile(
    r"(?:(?<!\bthis\s)(?<!\bthat\s)\banswer\b(?:\s+to\s+(?:the|this)\s+question)?"
    r"|\b(?:correct|right|best|final)\s+(?:option|choice)\b)\**"
    r"(?:\s+(?:here|in\s+this\s+case)|\s*,\s*(?:therefore|then|thus)\s*,)?\s*"
    r"(?:(?:is|would\s+be|should\s+be|will\s+be|must\s+be)\b"
    r"(?:\s+(?:therefore|thus|then|clearly|definitely|(?:most\s+)?(?:likely|probably))\b)?\s*:?"
    r"|[:=\uff1a]|[ \t]+[-\u2013\u2014][ \t]+)\**[ \t]*",
    re.IGNORECASE,
)
# A marker followed by "not" rejects an option ("The answer is not A because ..."): it gives no answer where another
# marker does.
_NEGATED = re.compile(r"[*\s]*not\b", re.IGNORECASE)
# "Answer" or "Final answer" as a heading of its own ("### Answer", "**Final Answer**"), the answer on a later line.
_ANSWER_HEADING = re.compile(r"^[ \t#>*_]*(?:final[ \t]+)?answer[ \t*_:]*$", re.IGNORECASE | re.MULTILINE)
# A verdict opening its sentence (after "so", "hence", "thus" or "therefore" at most) and ending it, or going on
# with its reason: "Option B is correct.", "B is the right answer because ...", "(B) is the answer.", "So B (red) is
# the best choice." The answer is the letter. "Someone might think A is the correct answer" and "Vitamin C is the
# correct answer" (the option's text) are no verdicts.
_VERDICT = re.compile(
    r"(?:^|(?<=[.!?:;\n]))[ \t*_>]*(?:(?:so|hence|thus|therefore)\b,?[ \t]*)?"
    r"(?P<ans>(?:(?:option|choice)[ \t]*)?[(\[]?[A-Za-z][)\]]?)(?:[ \t]*\([^()\n]*\))?"
    r"[ \t]+is[ \t]+(?:the[ \t]+)?"
    r"(?:(?:only[ \t]+)?(?:correct|right|best)(?:[ \t]+(?:answer|option|choice|one))?|answer)"
    r"(?=[ \t*_]*(?:[.!]|$)|,?[ \t]+(?:because|since|as)\b)",
    re.IGNORECASE | re.MULTILINE,
)
# One level of braces inside: "\boxed{\text{B}}".
_BOXED = re.compile(r"\\boxed\{(?P<ans>(?:[^{}]|\{[^{}]*\})*)\}")
_TEXT_COMMAND = re.compile(r"\\text\{([^{}]*)\}")
# A full-width sentence mark takes no space after it.
_SENTENCE_END = re.compile(rf"[.!?](?=\s|$)|[{FULL_WIDTH_SENTENCE_ENDS}]")
# Words a period follows inside a sentence ("Mr. Smith", "St. Louis", "e.g. 3"). "No." is left out: it is an answer.
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "mt", "ft", "vs", "e.g", "i.e", "cf", "approx"})
_INITIAL = re.compile(r"[A-Z]\.")
# ", because ...", ", as ...", or "because"/"since" without a comma ("3 because there are three").
# ", not A", " rather than A", " and not A": the rejected option after the chosen one.
_REASON_CLAUSE = re.compile(
    r"(?:,\s+(?:because|since|as|which|so|not)|\s+(?:because|since|rather\s+than|instead\s+of|(?:and|but)\s+not))\b.*$",
    re.IGNORECASE | re.DOTALL,
)
_TRIM = " \t\n*\"'`"

_OPTION = re.compile(
    r"^(?:(?:option|choice)\s*\(?(?P<a>[a-h])\)?(?![a-z])"
    r"|\((?P<b>[a-h])\)"
    r"|(?P<c>[a-h])[.):](?:\s|$)"
    r"|(?P<d>[a-h])$)"
)
# "yes"/"no" alone or before a new clause ("No, it is not."), which punctuation starts; "no parking" and
# "no entry" are answers of their own.
_YES_NO = re.compile(r"^(yes|no)\b\s*(?:$|[,.;:!?\u2013\u2014]|-\s)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Zeros ending a decimal part, and the point when nothing else follows it: "3.50" -> "3.5", "3.0" -> "3".
_TRAILING_ZEROS = re.compile(r"(?<=\d)(\.\d*?)0+(?!\d)")
_BARE_POINT = re.compile(r"(?<=\d)\.(?!\d)")
# Capital initials written with periods ("U.S.A.", "D.C."): one word. Split at the periods, the letters would
# be words of their own and the "A" of "U.S.A." taken for an article; joined, "U.S.A." and "USA" agree. Lower
# case ("e.g.", "a.m.") is left to the usual rules: "e g" is not a word to join, and "a" may be an article.
_DOTTED_INITIALS = re.compile(r"(?<!\w)[A-Z](?:\.[A-Z])+\.?(?!\w)")
# Words keep their combining marks (Arabic vowels, Devanagari vowel signs: "काम" is one word, not two).
_TOKEN = regex.compile(r"-?\d+(?:\.\d+)?|[\p{L}\p{N}][\p{L}\p{N}\p{M}]*")
# The ideographic full stop and comma, which NFKC leaves: "B。" reads as "B.". The comma lists ("5、100": 5 and
# 100), never groups thousands: a space after it keeps "5, 100" apart.
_CJK_PUNCTUATION = str.maketrans({"\u3002": ".", "\u3001": ", "})
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_UNITS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# "twenty-one" to "ninety-nine" (and "thirty" alone): one number, not "20 1".
_TENS_WORDS = re.compile(rf"\b({'|'.join(_TENS)})(?:[\s-]+({'|'.join(_UNITS)}))?\b")
# An answer followed by itself in brackets in other words: "3 (three)".
_RESTATED = re.compile(r"(.+?)\s*\(([^()]+)\)")
_ARTICLES = frozenset({"a", "an", "the"})
_WORDS = {
    **{word: str(value) for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split())},
    "grey": "gray",
}
_LETTER = re.compile(
    r"(?P<word>(?:option|choice)\s+)?(?P<open>[(\[])?(?P<letter>[A-Za-z])(?P<close>[)\]])?"
    r"(?P<sep>[\s.:,;)]*)(?P<rest>.*)",
    re.IGNORECASE | re.DOTALL,
)
# Nothing but option letters after a letter: "A, B" or "A, B or C" names several options (unless the letters are
# the chosen option's own text: "C. A and B" where C is "Both A and B").
_LETTER_ITEM = r"(?:option\s+)?[(\[]?[A-Z][)\]]?"
_LETTER_LIST = re.compile(rf"{_LETTER_ITEM}(?:\s*(?:[,;/]|,?\s+(?:or|and))\s*{_LETTER_ITEM})*[.:]?", re.IGNORECASE)
_SINGLE_LETTER = re.compile(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])")
# A capital letter an explanation names as an option ("A is wrong", "not A:", "C or D"), not the article "A" or the
# pronoun "I" before a word ("A cat sits", "A Boeing 747", "I think"), nor a letter of initials ("D.C."), a unit
# ("25°C"), a name or a word ("A380", "A-frame", "N/A", "x-A").
_NAMED_LETTER = re.compile(
    r"(?<![\w.\u00b0/\\'-])"
    r"(?:[AI](?![ \t]+(?:(?!(?:is|isn|was|are|would|should|could|can|does|did|has|will|may|might|must|seems?|appears?|"
    r"and|or|nor|but|as|to)\b)[a-z]|[A-Z][a-z]|\d))|[B-HJ-Z])"
    r"(?![\w-])(?!\.[A-Za-z])"
)
# Words after which a capital letter refers to an option ("is B", "go with B", "rules out A", "neither A nor D");
# after any other word it is a label ("vitamin C", "angle B", "Exit C"). After punctuation, a bracket or at the start
# of its sentence it refers to an option too.
_OPTION_REFERRERS = frozenset(
    "is be was are were it's that's with choose chose pick picked select selected option options choice choices "
    "answer so therefore thus hence then and or nor neither either not than between out except also both only but "
    "versus vs over like as make makes making".split())
# A line opening with an option letter as option lists write them ("A. blue", "(B) red", "C: wrong").
_LIST_ITEM = re.compile(r"[ \t]*[(\[]?(?P<letter>[A-Z])(?:[.):\]](?P<rest>.*)|[ \t]*)")
# Words of a clause that rejects the options it names, or only entertains them ("it might look like blue at first"),
# rather than choosing one.
_REJECTION = re.compile(
    r"\b(?:not|never|neither|nor|wrong|incorrect|false|unlikely|cannot|rules?\s+out|ruled\s+out|eliminat\w*|"
    r"distractors?|excluded?|might|may|could|at\s+first|mistaken)\b|n't\b",
    re.IGNORECASE,
)
# A sentence that declines to answer, naming no option.
_REFUSAL = re.compile(
    r"\b(?:cannot|can['\u2019]t|can\s+not|unable\s+to|impossible\s+to)\s+(?:be\s+)?(?:determine|tell|answer|decide|say|"
    r"identify)\w*|\bnot\s+(?:sure|certain)\b|\b(?:don['\u2019]t|do\s+not)\s+know\b|\bnone\s+of\s+the\s+"
    r"(?:options|above|choices)\b|\bnot\s+enough\s+information\b",
    re.IGNORECASE,
)
# Where a sentence's clauses part ("red, not blue"; "it is red and it is not moving"): a comma, semicolon or colon
# before a space, a dash between spaces, and the conjunctions that join clauses.
_CLAUSE_BREAK = re.compile(
    r"[,;:](?=\s)|\s+[-\u2013\u2014]\s+|\s+(?:but|though|although|while|whereas|and|yet|because|since)\s+",
    re.IGNORECASE,
)
# A single letter in bold or italics ("**B**"): read as the letter, so that "**B**. The car is blue." is "B. The car
# is blue." and "**A**, **B**" names two options as "A, B" does.
_EMPHASISED_LETTER = re.compile(r"(?<![A-Za-z*_])[*_]+(?P<letter>[A-Za-z])[*_]+(?![A-Za-z*_])")
# A reason after a letter, with or without a comma: "C because the sky is blue", "option C which is green"
# ("A as well as B" names two).
_REASON_WORD = re.compile(
    r"(?:because|since|as(?!\s+well\s+as)|which|given|due|rather\s+than|instead\s+of|(?:and|but)\s+not)\b",
    re.IGNORECASE,
)
# An option letter marked the way option lists mark them, anywhere in a reply: "(c)", "[C]", "c." or "c)"
# opening a line, and "C.", "C)", "C:" anywhere (upper case only: "e." in "i.e." is no option, nor "C." in "D.C.").
_MARKED_LETTER = re.compile(
    r"(?i:[(\[](?P<bracketed>[a-z])[)\]])"
    r"|(?im:^[ \t]*(?P<listed>[a-z])[.)](?=\s))"
    r"|(?<![\w.(\[])(?P<upper>[A-Z])[.):](?=\s|$)"
)


# A line holding an option letter alone ("B", "(B)", "**B.**"): a reply's direct answer.
_LONE_LETTER = re.compile(r"^[ \t*_]*[(\[]?(?P<letter>[A-Z])[)\].:]?[ \t*_]*$", re.MULTILINE)


def _contradicted(verdict: re.Match[str], text: str) -> bool:
    """Whether a line before ``verdict`` (a :data:`_VERDICT` match in ``text``) answered another letter alone ("A\n
    C is correct."): the reply then contradicts itself, and the verdict is no answer."""
    letter = _verdict_letter(verdict)
    return any(line.group("letter") != letter for line in _LONE_LETTER.finditer(text, 0, verdict.start()))


def _verdict_letter(verdict: re.Match[str]) -> str:
    """The option letter a :data:`_VERDICT` match gives its verdict to."""
    return verdict.group("ans").rstrip(")]")[-1].upper()


def answer_line(text: str) -> tuple[str, bool]:
    """Where the reply's final answer is written, and whether a marker (or ``\\boxed``) introduced it."""
    # A structured chain of thought concludes from step 4 on: "the answer is not A" in step 3 is reasoning, while a
    # reply of more steps may give its answer after step 4 ("Step 5: The answer is B.").
    start = step_start(text, len(COT_STEPS))
    inline = inline_steps(text, len(COT_STEPS)) if start is None else None
    if inline is not None:  # the steps written on one line ("Step 1: ... Step 4: B")
        text, start = inline, step_start(inline, len(COT_STEPS))
    conclusion = text if start is None else text[start:]
    marks = [(m.end(), None, bool(_NEGATED.match(conclusion, m.end()))) for m in _MARKER.finditer(conclusion)]
    marks += [(m.end(), None, False) for m in _ANSWER_HEADING.finditer(conclusion)]
    marks += [(m.end(), _TEXT_COMMAND.sub(r"\1", m.group("ans")), False) for m in _BOXED.finditer(conclusion)]
    verdicts = [m for m in _VERDICT.finditer(conclusion) if not _contradicted(m, conclusion)]
    marks += [(m.end(), m.group("ans"), False) for m in verdicts]
    marks.sort(key=lambda mark: mark[0])
    # "The answer is not A because ..." after an answer explains it; alone, "Answer: not visible" is the answer.
    answers = [mark for mark in marks if not mark[2]] or marks
    if answers:
        end, boxed, _ = answers[-1]
        if boxed is not None:
            return boxed.strip(), True
        # "The answer is:\n\nB": the answer may sit on the next non-empty line.
        lines = [line for line in conclusion[end:].splitlines() if line.strip(_TRIM)]
        return (lines[0] if lines else ""), True
    body, _ = final_step(text, len(COT_STEPS), COT_STEPS)
    return body, False


def _ends_sentence(before: str, after: str) -> bool:
    """Whether a period ends its sentence, given the sentence before it and the text after it.

    Not after a common abbreviation ("Mr. Smith"), nor after an initial inside a name ("John F. Kennedy").
    A letter opening the sentence, or after "option", is an option letter and ends it ("B. Because ..."),
    unless more initials follow ("J. K. Rowling").
    """
    words = before.split()
    if not words:
        return True
    word = words[-1].lstrip(_TRIM + "([")
    if word.lower() in _ABBREVIATIONS:
        return False
    if len(word) != 1 or not word.isalpha():
        return True
    following = after.split(maxsplit=1)
    following = following[0] if following else ""
    if len(words) == 1 or words[-2].lower() in ("option", "choice"):
        return not _INITIAL.fullmatch(following)
    return not (word.isupper() and words[-2][:1].isupper() and following[:1].isupper())


def _sentences(text: str) -> list[str]:
    """``text`` split after each mark that ends a sentence (each sentence keeps its mark)."""
    sentences, start = [], 0
    for mark in _SENTENCE_END.finditer(text):
        if mark.group() != "." or _ends_sentence(text[start : mark.start()], text[mark.end() :]):
            sentences.append(text[start : mark.end()])
            start = mark.end()
    return [*sentences, text[start:]]


def answer_phrase(text: str) -> tuple[str, bool]:
    """The final answer phrase (cut at its sentence's end and before ", because ..."; without a marker, the
    last sentence) and whether a marker introduced it."""
    line, marked = answer_line(text)
    if marked:
        phrase = _sentences(line)[0].strip()
        if _SENTENCE_END.fullmatch(phrase[-1:]):
            phrase = phrase[:-1]
        return _REASON_CLAUSE.sub("", phrase).strip(), True
    sentences = [s.strip() for s in _sentences(line.strip()) if s.strip()]
    return (sentences[-1] if sentences else ""), False


def _tens_number(match: re.Match) -> str:
    units = match.group(2)
    return str(10 * (_TENS.index(match.group(1)) + 2) + (_UNITS.index(units) + 1 if units else 0))


def _usual_forms(text: str) -> str:
    """``text`` with full-width letters, digits and punctuation ("（Ｂ）", "B。") as their usual forms."""
    return unicodedata.normalize("NFKC", text).translate(_CJK_PUNCTUATION)


def _clean(span: str) -> str:
    return span.strip().strip(_TRIM).rstrip(".").strip(_TRIM)


def extract_answer(text: str) -> str:
    """The reply's final answer as written (marker, step 4 or whole reply), without surrounding marks."""
    return _clean(answer_line(text)[0])


@functools.lru_cache(maxsize=1 << 16)  # option texts are normalised again for every reply and clause
def normalize_answer(phrase: str) -> str:
    """Normalise an answer phrase so that equal answers compare equal (rules in the module docstring)."""
    phrase = _usual_forms(phrase)  # full-width digits and letters ("３") as their usual forms
    restated = _RESTATED.fullmatch(phrase.strip())
    if restated and normalize_answer(restated.group(1)) == normalize_answer(restated.group(2)):
        phrase = restated.group(1)  # "3 (three)": the answer said twice
    text = _lowered(phrase)
    option = _OPTION.match(text)
    if option:
        return next(group for group in option.groups() if group)
    yes_no = _YES_NO.match(text)
    if yes_no:
        return yes_no.group(1)
    return _words(text)


def _lowered(phrase: str) -> str:
    """``phrase`` in lower case, initials joined, without quotes and emphasis, the minus sign as "-"."""
    text = _DOTTED_INITIALS.sub(lambda initials: initials.group().replace(".", ""), phrase).strip().lower()
    text = re.sub(r"[*`$\"'\u201c\u201d\u2018\u2019]", "", text).strip().replace("\u2212", "-")  # the minus sign
    return re.sub(r"^\\text\{(.*)\}$", r"\1", text)


def _words(text: str) -> str:
    """A lowered text's words as :func:`normalize_answer` writes them (numbers as digits, no articles)."""
    text = _TENS_WORDS.sub(_tens_number, _THOUSANDS.sub("", text))
    text = _BARE_POINT.sub("", _TRAILING_ZEROS.sub(r"\1", text))
    tokens = [_WORDS.get(token, token) for token in _TOKEN.findall(text)]
    return " ".join(token for token in tokens if token not in _ARTICLES)


@functools.lru_cache(maxsize=1 << 16)
def _word_form(text: str) -> str:
    """``text``'s words, normalised as answers are but for the option-letter and yes/no readings: where an option's
    text is looked for inside a reply ("a) blue" mentions "blue")."""
    return _words(_lowered(_usual_forms(text)))


@dataclass(frozen=True)
class Answer:
    """A reply's answer: the phrase found, its normalised form, and whether a marker introduced it."""

    phrase: str
    normalized: str
    explicit: bool


def parse_answer(text: str) -> Answer:
    """Find and normalise the final answer of a reply. A last sentence that gives an option its verdict against it
    ("D: incorrect.", "(A) is not the answer.") answers nothing: read as the letter, it voted for that option."""
    phrase, explicit = answer_phrase(text)
    normalized = normalize_answer(phrase)
    if not explicit and len(normalized) == 1 and _REJECTION.search(phrase.strip().splitlines()[0]):
        normalized = ""
    return Answer(phrase, normalized, explicit)


def answer_matches(prediction: str, answer: str) -> bool:
    """Whether a reply's final answer equals a short ground-truth answer (after normalisation)."""
    return parse_answer(prediction).normalized == normalize_answer(answer)


# ----------------------------------------------------------------------------------- multiple choice
def _usable_options(options: Mapping[str, object]) -> dict[str, str]:
    """Single upper-case letters with a non-empty text."""
    return {
        str(k): str(v).strip()
        for k, v in options.items()
        if len(str(k)) == 1 and str(k).isupper() and v is not None and str(v).strip()
    }


def _letter_choice(answer: str, options: dict[str, str], marked: bool) -> tuple[bool, str | None]:
    """Read ``answer`` as an option letter: ``(decided, letter)``; undecided answers are tried as text."""
    match = _LETTER.fullmatch(answer)
    if not match or match.group("letter").upper() not in options:
        return False, None
    letter, sep, rest = match.group("letter"), match.group("sep"), match.group("rest").strip()
    punctuated = any(c in sep for c in ".:,;)") or bool(match.group("close"))
    if rest and not sep:
        return False, None  # the letter starts a word ("Blue")
    if letter.islower():
        # A lone lower-case letter may be a word (the article "a"); it needs a mark around it.
        if not (marked or match.group("word") or match.group("open") or punctuated):
            return False, None
        letter = letter.upper()
    if not rest:
        return True, letter
    if not punctuated:
        if _exact_choice(rest.strip("()[] \t"), {letter: options[letter]})[0]:
            return True, letter  # "A (A+)": the letter and its own text
        if _REASON_WORD.match(rest):
            return True, letter  # "C because A is red": the letter, not the options its reason names
        return _line_choice(match, options)  # "B\nThe dog in the background is blurred."; "A red circle", "A or B"
    wanted = normalize_answer(rest)
    if wanted == normalize_answer(options[letter]):
        return True, letter
    others = set(options) - {letter}
    other_text = any(normalize_answer(options[k]) == wanted for k in others)
    named = {c.upper() for c in _SINGLE_LETTER.findall(rest)} if _LETTER_LIST.fullmatch(rest) else set()
    own = {c.upper() for c in _SINGLE_LETTER.findall(options[letter])}
    other_letter = bool(named & set(options)) and not named <= own
    # An echoed option list ("A. blue\nB. red", "(A) blue (B) red") marks other letters after the first.
    listed = any(next(filter(None, m.groups())).upper() in others for m in _MARKED_LETTER.finditer(rest))
    # A verdict for another letter after it ("A.\nC is correct."): the reply contradicts itself.
    verdict = any(_verdict_letter(m) in others for m in _VERDICT.finditer(rest))
    if other_text or other_letter or listed or verdict:
        return True, None  # "B. blue" where blue is A, "A, B", or a list of options: several options named
    return True, letter  # "B. The circle is red."


def _line_choice(match: re.Match[str], options: dict[str, str]) -> tuple[bool, str | None]:
    """A letter without punctuation and more text after it (``match``: :data:`_LETTER`'s), as
    :func:`_letter_choice` decides: a capital alone on its line above an explanation chooses it ("B\nThe dog is
    blurred."), and none when the explanation names another option's letter (an option list "A\nB\nC", another
    verdict "A\nC is correct.", "B\nA is wrong: it is a dog.") or is another option's text ("C\nleft" where A is
    "left"); undecided, read as text, is a letter on the line of more words ("A red circle", "A or B") or the
    article "A" or pronoun "I" whose sentence goes on on the next line in lower case ("A\nyellow car is shown")."""
    letter, rest = match.group("letter"), match.group("rest")
    if "\n" not in match.group("sep") or not letter.isupper() or (letter in "AI" and rest[:1].islower()):
        return False, None
    # The option's own text names no other option ("C\nWashington D.C." where C is "Washington D.C.").
    own = options[letter].rstrip(".")
    explanation = re.sub(re.escape(own), " ", rest, flags=re.IGNORECASE) if own else rest
    named = _named_letters(explanation)
    other_text = _exact_choice(explanation, {k: v for k, v in options.items() if k != letter})[0]
    return True, None if (named - {letter}) & set(options) or other_text else letter


def _named_letters(text: str) -> set[str]:
    """The capital letters ``text`` names as options (:data:`_NAMED_LETTER`, after no word but the
    :data:`_OPTION_REFERRERS`)."""
    named = set()
    for match in _NAMED_LETTER.finditer(text):
        words = text[: match.start()].rpartition("\n")[2].split()  # a letter opening its line names an option
        if not words or not words[-1][-1:].isalnum() or words[-1].lower().replace("\u2019", "'") in _OPTION_REFERRERS:
            named.add(match.group())
    return named


def _inside_other(span: tuple[int, int], key: str, spans: dict[str, list[tuple[int, int]]]) -> bool:
    """Whether ``span`` lies within a longer mention of another option ("red" inside "dark red")."""
    start, end = span
    return any(
        other != key and s <= start and end <= e and e - s > end - start for other in spans for s, e in spans[other]
    )


def _exact_choice(answer: str, options: dict[str, str]) -> tuple[bool, str | None]:
    """``(decided, letter)``: decided when the answer is some option's text (None when several options have it).
    Symbols, which normalise to nothing, compare as written ("+" is the option "+", not "-")."""
    wanted = normalize_answer(answer)
    if wanted:
        exact = [k for k, v in options.items() if normalize_answer(v) == wanted]
    else:
        written = _clean(_usual_forms(answer))
        exact = [k for k, v in options.items() if written and _clean(_usual_forms(v)) == written]
    return bool(exact), exact[0] if len(exact) == 1 else None


def _mentioned(answer: str, options: dict[str, str]) -> set[str]:
    """The options whose text the answer mentions (whole words, not inside a longer option's text)."""
    wanted, spans = _word_form(answer), {}
    for key, value in options.items():
        text = _word_form(value)
        if text:
            spans[key] = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(text)}(?!\w)", wanted)]
    return {key for key, found in spans.items() if any(not _inside_other(span, key, spans) for span in found)}


def _text_choice(answer: str, options: dict[str, str]) -> str | None:
    """The one option whose text the answer is, or else the one it mentions (whole words)."""
    decided, letter = _exact_choice(answer, options)
    if decided:
        return letter
    mentioned = _mentioned(answer, options)
    return mentioned.pop() if len(mentioned) == 1 else None


def _masked(sentence: str, options: dict[str, str]) -> tuple[str, list[str]]:
    """``sentence`` with each option's own text replaced by a placeholder (the texts, in order of their numbers):
    "vitamin C" names no option C, "not" in the option "The dog is not sleeping." rejects nothing, "Both B and C"
    is not cut in two, and "A cold is visible" keeps its article."""
    texts: list[str] = []

    def hold(match: re.Match[str]) -> str:
        texts.append(match.group())
        return f" \x00{len(texts) - 1}\x00 "

    for text in sorted(options.values(), key=len, reverse=True):
        if text.rstrip("."):
            sentence = re.sub(rf"(?<!\w){re.escape(text.rstrip('.'))}(?!\w)", hold, sentence, flags=re.IGNORECASE)
    return sentence, texts


_PLACEHOLDER = re.compile(" ?\x00(\\d+)\x00 ?")
# A sentence that may go on after its mark: an ellipsis, or the period of an option's own text.
_GOES_ON = re.compile("(?:\\.\\.\\.|\u2026|\x00 ?\\.)\\s*$")


def _unmasked(text: str, texts: list[str]) -> str:
    """``text`` (part of :func:`_masked`'s output) with the options' texts back in place."""
    return _PLACEHOLDER.sub(lambda held: f" {texts[int(held.group(1))]} ", text)


@dataclass(frozen=True)
class _Judged:
    """The options a sentence names (by letter or text), by clause: chosen, rejected (named in a clause of a rejecting
    or entertaining word: "not blue", "A is wrong", "rules out A", "might look like blue"), those chosen by their
    text, and whether it hedges (names several joined by "or": "A or B", "red... or blue")."""

    chosen: set[str]
    rejected: set[str]
    by_text: set[str]
    hedged: bool


def _judged_options(masked: str, texts: list[str], options: dict[str, str], worded: dict[str, str]) -> _Judged:
    """How a sentence names ``options`` (:class:`_Judged`), given as :func:`_masked` holds the texts of the options
    ``worded`` aside (those whose text is more than a letter: "B" is option B, not the option whose text is "B")."""
    chosen, rejected, by_text = set(), set(), set()
    for clause in _CLAUSE_BREAK.split(masked):
        bare = _PLACEHOLDER.sub(" thing ", clause)
        mentioned = _mentioned(_unmasked(clause, texts), worded)
        named = (mentioned | _named_letters(bare)) & set(options)
        if _REJECTION.search(bare):
            rejected |= named
        else:
            chosen |= named
            by_text |= mentioned
    hedged = len(chosen | rejected) > 1 and re.search(r"\bor\b", masked, re.IGNORECASE) is not None
    return _Judged(chosen, rejected, by_text, hedged)


def _after_option_list(lines: list[str]) -> list[str] | None:
    """The lines after an option list (two or more lines opening with option letters: "A. blue", "B: Right", a
    letter alone with its text on the next line), which name every option; None without one."""
    items = [(i, match) for i, line in enumerate(lines) if (match := _LIST_ITEM.fullmatch(line))]
    if len({match.group("letter") for _, match in items}) < 2:
        return None
    last, match = items[-1]
    return lines[last + 1 + (match.group("rest") is None) :]


def _concluded_choice(answer: str, options: dict[str, str]) -> str | None:
    """The option an unmarked reply concludes with: its text as a whole, else the one option chosen (named by its
    letter or text, in no clause that rejects it) in the last sentence that names any, after an option list if the
    reply holds one ("A: wrong.\nB: wrong.\nSo C."). None when that sentence chooses none or several ("It is not
    blue.", "It is A or B."), when an earlier sentence chooses another option ("It is a cat. A dog would be
    larger."), or when the reply ends by declining to answer ("I cannot tell from the image.")."""
    decided, letter = _exact_choice(answer, options)
    if decided:
        return letter
    lines = [line for line in answer.splitlines() if line.strip()]
    after = _after_option_list(lines)
    worded = {key: text for key, text in options.items() if not _SINGLE_LETTER.fullmatch(text.strip())}
    sentences: list[tuple[str, list[str]]] = []  # each masked, with its line's texts
    for line in lines if after is None else after:
        # Split with the options' texts held aside: "Vitamin D." ends its sentence, as no initial inside a name does.
        masked, texts = _masked(line, worded)
        goes_on = False
        for part in filter(str.strip, _sentences(masked)):
            # "red... or blue", "The sky is cloudy. does not describe it" (an option's own period): one sentence.
            if goes_on and _unmasked(part, texts).lstrip()[:1].islower():
                sentences[-1] = (f"{sentences[-1][0]} {part}", texts)
            else:
                sentences.append((part, texts))
            goes_on = _GOES_ON.search(part) is not None
    judged = [_judged_options(part, texts, options, worded) for part, texts in sentences]
    for index in reversed(range(len(sentences))):
        last = judged[index]
        if last.chosen or last.rejected:
            if last.hedged or len(last.chosen) != 1:
                return None
            # An earlier sentence that chose another option by its text contradicts this one (a capital there may be
            # a label: "D is the midpoint of BC").
            others = {key for earlier in judged[:index] for key in earlier.by_text} - last.chosen
            return None if others else next(iter(last.chosen))
        if _REFUSAL.search(_unmasked(*sentences[index])):
            return None
    return None


def extract_choice(prediction: str, options: Mapping[str, object]) -> str | None:
    """The option letter a reply chose, or None when it chose none or several.

    ``options`` maps upper-case letters to option texts (empty or missing options are ignored).
    """
    usable = _usable_options(options)
    if not usable or not prediction:
        return None
    # Full-width letters and brackets ("（Ｂ）") as their usual forms, as normalize_answer reads them for curation.
    line, marked = answer_line(_EMPHASISED_LETTER.sub(r"\g<letter>", _usual_forms(prediction)))
    answer = _clean(line)
    if not answer:
        return None
    if not marked and _after_option_list([line for line in answer.splitlines() if line.strip()]):
        return _concluded_choice(answer, usable)  # "A: Left\nB: Right\nThe cup is on the left.": what follows
    decided, letter = _letter_choice(answer, usable, marked)
    if decided:
        return letter
    return _text_choice(answer, usable) if marked else _concluded_choice(answer, usable)


def extract_yes_no(prediction: str) -> str | None:
    """"yes" or "no" as the reply's final answer says (any case), or None when it says neither or both."""
    words = re.findall(r"[a-z]+", extract_answer(_usual_forms(prediction)).lower())
    if words and words[0] in ("yes", "no"):
        return words[0]  # "No, there is no dog." / "Yes, there is a dog, but no cat."
    said = {"yes", "no"} & set(words)
    return said.pop() if len(said) == 1 else None
