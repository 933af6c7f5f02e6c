"""How long an outbound message is, what it costs in SMS segments, and where to cut it.

The rules come from docs/messaging.md, "Length and segments":

- SMS bills per segment. GSM-7 text fits 160 septets in one segment and 153 per segment once it
  is split; one character outside GSM-7 makes the whole message UCS-2: 70 UTF-16 code units in
  one segment, 67 per segment when split (Twilio, "What is the SMS character limit?",
  https://www.twilio.com/docs/glossary/what-sms-character-limit). A split message loses 7 septets
  / 3 code units per segment to the 6-octet concatenation header (3GPP TS 23.040, 9.2.3.24.1).
- The GSM-7 alphabet and its extension table come from 3GPP TS 23.038 section 6.2.1, through the
  pinned ``gsm0338`` codec; an extension-table character (``{ } [ ] ~ \\ | ^ €`` and form feed) is
  sent as ESC + character, so it costs 2 septets and is never split across segments. Likewise a
  UTF-16 surrogate pair (an emoji outside the Basic Multilingual Plane) is never split.
- Prefer GSM-7 (`normalise_for_gsm`, and for Spanish `fold_for_gsm`), count segments for cost
  (`count_segments`), cap SMS replies at a few segments with a "Reply MORE" continuation
  (`cap_sms`), and keep every message on every channel within 1,600 characters, splitting
  WhatsApp replies on sentence boundaries (`split_message`; Twilio's Message resource caps
  ``Body`` at 1,600 characters).
- A cut falls on a sentence end, a paragraph break or the start of a list item, else a line
  break, else between words; never inside a word, nor inside a short quotation ("text \"meal
  plan, no snacks\"") while there is a word boundary outside one.

Everything here is a pure function of its arguments: no I/O, no clock, no configuration.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

import gsm0338  # noqa: F401  (importing registers the "gsm03.38" codec)

Encoding = Literal["GSM-7", "UCS-2"]

GSM7: Final = "GSM-7"
UCS2: Final = "UCS-2"

MAX_MESSAGE_CHARS: Final = 1600
"""Characters (``len()``) in one message on any channel (docs/messaging.md; Twilio ``Body``
limit)."""

GSM7_SINGLE_SEPTETS: Final = 160
"""Septets in an unsplit GSM-7 SMS (3GPP TS 23.038; Twilio character-limit glossary)."""

GSM7_SPLIT_SEPTETS: Final = 153
"""Septets per segment of a split GSM-7 SMS: 160 less the 7-septet concatenation header."""

UCS2_SINGLE_UNITS: Final = 70
"""UTF-16 code units in an unsplit UCS-2 SMS (140 octets / 2)."""

UCS2_SPLIT_UNITS: Final = 67
"""UTF-16 code units per segment of a split UCS-2 SMS: 70 less the 3-unit header."""

DEFAULT_SMS_MAX_SEGMENTS: Final = 2
"""Default cap on one SMS reply, in segments (docs/messaging.md)."""

MORE_HINT: Final = "\n(Reply MORE for the rest)"
"""Appended to a capped SMS reply; asking for MORE costs no tokens (docs/messaging.md). The reply
in the person's language is `bot.replies.more_hint`; this is its English default."""

# Spanish letters outside GSM-7 (3GPP TS 23.038 has é, ñ, Ñ, ü, Ü, ¿, ¡ but not these), and the
# GSM-7 letter a Spanish reader takes for each (`fold_for_gsm`).
_SPANISH_FOLD: Final = str.maketrans("áíóúÁÍÓÚ", "aiouAIOU")

# Typographic characters with a GSM-7 equivalent. Only characters outside GSM-7 belong here
# (a test checks that every key fails to encode and every value encodes).
_GSM_EQUIVALENTS: Final[dict[str, str]] = {
    # single quotes, apostrophes, primes, accents used as apostrophes
    "\u2018": "'",  # LEFT SINGLE QUOTATION MARK
    "\u2019": "'",  # RIGHT SINGLE QUOTATION MARK
    "\u201a": "'",  # SINGLE LOW-9 QUOTATION MARK
    "\u201b": "'",  # SINGLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2032": "'",  # PRIME
    "\u2035": "'",  # REVERSED PRIME
    "\u2039": "'",  # SINGLE LEFT-POINTING ANGLE QUOTATION MARK
    "\u203a": "'",  # SINGLE RIGHT-POINTING ANGLE QUOTATION MARK
    "\u02bc": "'",  # MODIFIER LETTER APOSTROPHE
    "\u00b4": "'",  # ACUTE ACCENT
    "`": "'",  # GRAVE ACCENT (not in GSM-7)
    # double quotes
    "\u201c": '"',  # LEFT DOUBLE QUOTATION MARK
    "\u201d": '"',  # RIGHT DOUBLE QUOTATION MARK
    "\u201e": '"',  # DOUBLE LOW-9 QUOTATION MARK
    "\u201f": '"',  # DOUBLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2033": '"',  # DOUBLE PRIME
    "\u00ab": '"',  # LEFT-POINTING DOUBLE ANGLE QUOTATION MARK
    "\u00bb": '"',  # RIGHT-POINTING DOUBLE ANGLE QUOTATION MARK
    # dashes and minus
    "\u2010": "-",  # HYPHEN
    "\u2011": "-",  # NON-BREAKING HYPHEN
    "\u2012": "-",  # FIGURE DASH
    "\u2013": "-",  # EN DASH
    "\u2014": "-",  # EM DASH
    "\u2015": "-",  # HORIZONTAL BAR
    "\u2212": "-",  # MINUS SIGN
    # list bullets
    "\u2022": "-",  # BULLET
    "\u2023": "-",  # TRIANGULAR BULLET
    "\u2043": "-",  # HYPHEN BULLET
    "\u25e6": "-",  # WHITE BULLET
    "\u00b7": "-",  # MIDDLE DOT
    # ellipsis and dot leaders
    "\u2026": "...",  # HORIZONTAL ELLIPSIS
    "\u2025": "..",  # TWO DOT LEADER
    "\u2024": ".",  # ONE DOT LEADER
    # arithmetic
    "\u00d7": "x",  # MULTIPLICATION SIGN
    "\u00f7": "/",  # DIVISION SIGN
    "\u2044": "/",  # FRACTION SLASH
    # spaces
    "\t": " ",
    "\u00a0": " ",  # NO-BREAK SPACE
    "\u1680": " ",  # OGHAM SPACE MARK
    **{chr(cp): " " for cp in range(0x2000, 0x200B)},  # EN QUAD .. HAIR SPACE
    "\u202f": " ",  # NARROW NO-BREAK SPACE
    "\u205f": " ",  # MEDIUM MATHEMATICAL SPACE
    "\u3000": " ",  # IDEOGRAPHIC SPACE
    # line breaks
    "\u2028": "\n",  # LINE SEPARATOR
    "\u2029": "\n",  # PARAGRAPH SEPARATOR
    "\u0085": "\n",  # NEXT LINE
    # invisible characters, dropped
    "\u200b": "",  # ZERO WIDTH SPACE
    "\u2060": "",  # WORD JOINER
    "\ufeff": "",  # ZERO WIDTH NO-BREAK SPACE (byte order mark)
    "\u00ad": "",  # SOFT HYPHEN
}
_GSM_TRANSLATION: Final = str.maketrans(_GSM_EQUIVALENTS)

# ZERO WIDTH NON-JOINER / JOINER glue emoji sequences and shape Arabic and Indic scripts, so a
# run of them is kept when it sits between two non-GSM characters and dropped otherwise.
_JOINERS: Final = re.compile("[\u200c\u200d]+")

# A cut point is the start of a run of whitespace; the run itself is dropped by the cut.
_WHITESPACE_RUN: Final = re.compile(r"\s+")
# After a line break, the start of a list item: "- eggs", "* oats", "• rice", "1. Stir", "2) Bake".
_LIST_ITEM: Final = re.compile("(?:[-*\u2022]|[0-9]{1,2}[.)])\\s")
# Quotation marks: a straight double quote opens and closes; the typographic ones are paired.
_QUOTE_OPEN: Final = "\u201c\u00ab"
_QUOTE_CLOSE: Final = "\u201d\u00bb"
# The text before a cut ends a sentence: terminal punctuation, then optional closing quotes or
# brackets ("Eat well." / "(see above.)").
_SENTENCE_END: Final = re.compile("[.!?][\"')\\]\u2019\u201d\u00bb]*\\Z")


@dataclass(frozen=True)
class SegmentCount:
    """The size and SMS cost of one message body.

    Attributes:
        encoding: "GSM-7" or "UCS-2", the alphabet the whole body is sent in.
        units: length in the encoding's units: septets for GSM-7 (an extension-table character
            counts 2: ESC + character), UTF-16 code units for UCS-2 (a character outside the
            Basic Multilingual Plane, e.g. most emoji, counts 2).
        segments: SMS segments billed (0 for an empty body, which is never sent).
    """

    encoding: Encoding
    units: int
    segments: int


@lru_cache(maxsize=4096)
@functools.lru_cache(maxsize=4096)
def _gsm_septets(char: str) -> int | None:
    """Septets one character takes in GSM-7 (1, or 2 for ESC + extension), None if not GSM-7."""
    try:
        return len(char.encode("gsm03.38"))
    except UnicodeEncodeError:
        return None


def _is_gsm(char: str) -> bool:
    return _gsm_septets(char) is not None


def normalise_for_gsm(text: str) -> str:
    """Replace typographic characters by their GSM-7 equivalents, so a reply stays GSM-7.

    Applies Unicode NFC first (a decomposed "é" becomes the GSM-7 "é"), then: curly and angle
    quotes, primes and the grave/acute accents used as apostrophes become ``'`` or ``"``; hyphens,
    en/em dashes, the minus sign and list bullets become ``-``; "…" becomes ``...``; "×" becomes
    ``x`` and "÷" ``/``; tabs and Unicode spaces become a plain space and Unicode line separators
    ``\\n``; zero-width spaces, word joiners, byte order marks and soft hyphens are removed, and so
    are zero-width (non-)joiners unless they sit between two non-GSM characters (where they glue
    an emoji sequence or shape a script). Everything else, emoji and accented letters outside
    GSM-7 included, is left as it is, so the result may still be UCS-2.

    Why: one character outside GSM-7 switches the whole SMS to UCS-2, which cuts a segment from
    160 to 70 characters (docs/messaging.md: "prefer GSM-7 (normalise smart quotes)"). The mapping
    follows the spirit of Twilio's Smart Encoding
    (https://www.twilio.com/docs/messaging/services/smart-encoding-char-list).

    Args:
        text: a reply body.

    Returns:
        The normalised text. The function is idempotent.
    """
    # Dropping a character can let NFC compose its neighbours (or give a joiner new
    # neighbours), so repeat until nothing changes; every round after the first only shortens.
    while True:
        normalised = _normalise_once(text)
        if normalised == text:
            return normalised
        text = normalised


def _normalise_once(text: str) -> str:
    """One round of `normalise_for_gsm`: NFC, the equivalents table, then loose joiners."""
    text = unicodedata.normalize("NFC", text).translate(_GSM_TRANSLATION)

    def drop_loose_joiners(match: re.Match[str]) -> str:
        start, end = match.span()
        before = text[start - 1] if start > 0 else ""
        after = text[end] if end < len(text) else ""
        if before and after and not _is_gsm(before) and not _is_gsm(after):
            return match.group()
        return ""

    return unicodedata.normalize("NFC", _JOINERS.sub(drop_loose_joiners, text))


def fold_for_gsm(text: str) -> str:
    """Drop the accent of á, í, ó and ú (and capitals) when that makes ``text`` GSM-7.

    Why: one of these letters turns a whole SMS into UCS-2, 67 instead of 153 characters a
    segment, so a two-segment Spanish answer would stop after about 100 characters. Written
    without them ("dia", "si", "mas") Spanish stays readable, as people write it by SMS; é, ñ,
    ü, ¿ and ¡ are GSM-7 and stay. The offline skills' answers follow the same rule
    (`bot.intents.offline.for_channel`). When something else keeps the text UCS-2 anyway (an
    emoji, another script), nothing would be gained, and the accents are kept.

    Args:
        text: an SMS body, already through `normalise_for_gsm`.

    Returns:
        The folded text if it is then GSM-7, else ``text`` unchanged.
    """
    folded = text.translate(_SPANISH_FOLD)
    if folded != text and encoding(folded) == GSM7:
        return folded
    return text


def encoding(text: str) -> Encoding:
    """The alphabet an SMS body is sent in: "GSM-7" if every character is in GSM 03.38.

    Rule: 3GPP TS 23.038 (basic character set plus the single-shift extension table, checked
    with the ``gsm0338`` codec); one character outside it makes the whole message UCS-2
    (docs/messaging.md; Twilio character-limit glossary). The empty text is "GSM-7".

    Args:
        text: the body as it will be sent (normalise it first to prefer GSM-7).
    """
    return GSM7 if all(_is_gsm(char) for char in text) else UCS2


# The characters of GSM-7's basic table (each one septet; all 128 but ESC) and of its
# extension table (ESC + one septet each), from the codec itself.
_GSM7_BASIC_CHARS = "".join(bytes([septet]).decode("gsm03.38")
                            for septet in range(128) if septet != 0x1B)
_GSM7_EXTENSION_CHARS = "".join(
    char for char in (bytes([0x1B, septet]).decode("gsm03.38", errors="ignore")
                      for septet in range(128))
    if len(char) == 1 and len(char.encode("gsm03.38")) == 2)
# Texts whose every character costs one unit (GSM-7 basic, or UCS-2 within the BMP) pack
# greedily by plain division, so `count_segments` need not walk them.
_GSM7_BASIC = re.compile(f"[{re.escape(_GSM7_BASIC_CHARS)}]*")
# (ESC itself encodes too, so a text with one takes the walk.)
_GSM7_ANY = re.compile(f"[{re.escape(_GSM7_BASIC_CHARS + _GSM7_EXTENSION_CHARS)}\x1b]*")
_BMP_ONLY = re.compile("[^\U00010000-\U0010ffff]*")


def _unit_costs(text: str) -> tuple[Encoding, list[int]]:
    """The encoding of ``text`` and each character's cost in that encoding's units."""
    septets = [_gsm_septets(char) for char in text]
    if all(cost is not None for cost in septets):
        return GSM7, [cost or 0 for cost in septets]
    return UCS2, [2 if ord(char) > 0xFFFF else 1 for char in text]


def count_segments(text: str) -> SegmentCount:
    """Count the SMS segments a body is billed as.

    Rules (docs/messaging.md, "Length and segments"; Twilio character-limit glossary; 3GPP TS 23.040
    for the concatenation header): GSM-7 text of at most 160 septets is one segment, longer text
    is packed into segments of 153 septets; UCS-2 text of at most 70 UTF-16 code units is one
    segment, longer text is packed into segments of 67 units. Packing is greedy and never splits
    an ESC + extension pair or a surrogate pair, so a split message can take one segment more
    than ``ceil(units / 153)`` (or ``/ 67``) when such a character straddles a boundary.

    The empty body counts 0 segments: it is never sent (Twilio refuses a message with neither
    body nor media, error 21602), so it is never billed.

    Args:
        text: the body exactly as it will be sent (no normalisation is applied here).

    Returns:
        The encoding, the length in septets (GSM-7) or UTF-16 code units (UCS-2), and the
        number of segments.
    """
    if _GSM7_BASIC.fullmatch(text):
        return _uniform(GSM7, len(text), GSM7_SINGLE_SEPTETS, GSM7_SPLIT_SEPTETS)
    if not _GSM7_ANY.fullmatch(text) and _BMP_ONLY.fullmatch(text):
        return _uniform(UCS2, len(text), UCS2_SINGLE_UNITS, UCS2_SPLIT_UNITS)
    enc, costs = _unit_costs(text)
    units = sum(costs)
    single, split = (
        (GSM7_SINGLE_SEPTETS, GSM7_SPLIT_SEPTETS)
        if enc == GSM7
        else (UCS2_SINGLE_UNITS, UCS2_SPLIT_UNITS)
    )
    if units == 0:
        return SegmentCount(enc, 0, 0)
    if units <= single:
        return SegmentCount(enc, units, 1)
    segments, used = 1, 0
    for cost in costs:
        if used + cost > split:
            segments, used = segments + 1, 0
        used += cost
    return SegmentCount(enc, units, segments)


def _uniform(enc: Encoding, units: int, single: int, split: int) -> SegmentCount:
    """`count_segments` of a text whose characters each cost one unit."""
    if units == 0:
        return SegmentCount(enc, 0, 0)
    return SegmentCount(enc, units, 1 if units <= single else -(-units // split))


def _joins_previous(char: str) -> bool:
    """True if ``char`` belongs to the character before it (a mark, joiner, or modifier)."""
    return (
        unicodedata.category(char) in ("Mn", "Mc", "Me")
        or char in "\u200c\u200d"
        or "\U0001f3fb" <= char <= "\U0001f3ff"  # emoji skin-tone modifiers
    )


def _hard_cut(text: str, limit: int) -> int:
    """A cut at or before ``limit`` that keeps combining marks and emoji sequences whole."""
    cut = limit
    while cut > 1 and (_joins_previous(text[cut]) or text[cut - 1] in "\u200c\u200d"):
        cut -= 1
    return cut


def _quoted(text: str, end: int) -> list[bool]:
    """For each position up to ``end``: whether it lies inside a quotation. A straight double
    quote toggles, a typographic one opens or closes; a quote with no partner later in the
    text (a stray inch mark) opens nothing."""
    inside = [False] * (end + 1)
    straight = [i for i, char in enumerate(text) if char == '"']
    if len(straight) % 2:
        straight.pop()  # the last one has no partner
    toggles = set(straight)
    last_close = max((i for i, char in enumerate(text) if char in _QUOTE_CLOSE), default=-1)
    straight_open = typographic = False
    for i in range(end + 1):
        inside[i] = straight_open or typographic
        if i >= len(text):
            break
        char = text[i]
        if i in toggles:
            straight_open = not straight_open
        elif char in _QUOTE_OPEN and i < last_close:
            typographic = True
        elif char in _QUOTE_CLOSE:
            typographic = False
    return inside


def _choose_cut(text: str, limit: int) -> int:
    """Where to cut ``text`` so that ``text[:cut]`` has at most ``limit`` characters.

    Preference, among the whitespace runs outside a quotation: the last sentence end,
    paragraph break or list-item start, then the last line break (each only if it keeps at
    least half of ``limit``, so a boundary does not waste most of a message), then the last
    whitespace; then the last whitespace inside a quotation; then a hard cut (only a word
    longer than ``limit`` gets one). ``text`` must not start with whitespace and
    ``1 <= limit < len(text)``; the result is in ``[1, limit]``.
    """
    sentence = line = word = any_word = 0
    inside = _quoted(text, limit) if any(q in text for q in '"' + _QUOTE_OPEN) else None
    for run in _WHITESPACE_RUN.finditer(text, 1, limit + 1):
        cut, gap = run.start(), run.group()
        any_word = cut
        if inside is not None and inside[cut]:
            continue
        word = cut
        if "\n" in gap:
            line = cut
            if _LIST_ITEM.match(text, run.end()):
                sentence = cut
        if gap.count("\n") >= 2 or _SENTENCE_END.search(text, max(0, cut - 8), cut):
            sentence = cut
    half = limit // 2
    if sentence >= half and sentence:
        return sentence
    if line >= half and line:
        return line
    return word or any_word or _hard_cut(text, limit)


def cap_sms(
    text: str,
    max_segments: int = DEFAULT_SMS_MAX_SEGMENTS,
    more_hint: str = MORE_HINT,
) -> tuple[str, str]:
    """Cap an SMS reply at ``max_segments`` segments, keeping the rest for a "MORE" request.

    Rule: docs/messaging.md, "cap SMS replies (default 2 segments) with a 'Reply MORE' continuation
    that costs no tokens". When ``text`` fits it is returned untouched. Otherwise it is stripped
    of leading and trailing whitespace (which alone never triggers a continuation) and cut as
    late as possible such that the head, with its trailing whitespace removed and ``more_hint``
    appended, fits in ``max_segments`` segments under the encoding of that head-plus-hint. The cut
    prefers the last sentence end or paragraph break, then line break (each only if it keeps at
    least half of the longest possible head), then the last word boundary, then a hard cut (which
    keeps combining marks and emoji sequences whole). The whitespace at the cut is dropped.

    Args:
        text: the reply body, already normalised if GSM-7 is wanted.
        max_segments: the cap, in SMS segments (>= 1).
        more_hint: appended to a capped head, e.g. "\\n(Reply MORE for the rest)".

    Returns:
        ``(head, rest)``: ``(text, "")`` when ``text`` fits; otherwise ``head`` is the cut text
        followed by ``more_hint`` and fits in ``max_segments`` segments, and ``rest`` is the
        non-empty remainder without leading whitespace. The non-whitespace characters of
        ``text`` are exactly those of the head (without the hint) followed by ``rest``.

    Raises:
        ValueError: ``max_segments`` is below 1, ``more_hint`` alone does not fit in
            ``max_segments`` segments, or it leaves no room for a single character of ``text``.
    """
    if max_segments < 1:
        raise ValueError(f"max_segments must be at least 1, got {max_segments}")
    if count_segments(more_hint).segments > max_segments:
        raise ValueError(f"more_hint does not fit in {max_segments} SMS segment(s)")
    if count_segments(text).segments <= max_segments:
        return text, ""
    body = text.strip()
    if count_segments(body).segments <= max_segments:
        return body, ""

    def fits(cut: int) -> bool:
        return count_segments(body[:cut] + more_hint).segments <= max_segments

    # Segment counts only grow as characters are appended (greedy packing is monotone and a
    # switch to UCS-2 never lowers the count), so the longest fitting head is found by bisection.
    # The cut stays below len(body) so that the rest is never empty.
    low, high = 0, len(body) - 1
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    if low == 0:
        raise ValueError(f"more_hint leaves no room for text in {max_segments} SMS segment(s)")
    cut = _choose_cut(body, low)
    return body[:cut] + more_hint, body[cut:].lstrip()


def split_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    """Split a reply into messages of at most ``limit`` characters each (for WhatsApp).

    Rule: docs/messaging.md, "Every channel caps a message at 1,600 characters; WhatsApp
    replies split on sentence boundaries below that". Characters are counted with ``len()``
    (Unicode code points), as Twilio counts the ``Body`` limit. Each cut is at the last
    sentence end or paragraph break before the limit, else the last line break (each only if
    it keeps at least half of ``limit``), else the last whitespace, else a hard cut that keeps
    combining marks and emoji sequences whole. The whitespace at each cut is dropped, and so
    is the leading and trailing whitespace of a text that has to be split.

    Args:
        text: the reply body.
        limit: the most characters in one part (>= 1).

    Returns:
        ``[]`` for an empty or whitespace-only text, ``[text]`` when it is within ``limit``,
        else the non-empty parts, in order; the non-whitespace characters of the parts, joined,
        are those of ``text``.

    Raises:
        ValueError: ``limit`` is below 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if not text.strip():
        return []
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = _choose_cut(rest, limit)
        parts.append(rest[:cut])
        rest = rest[cut:].lstrip()
    parts.append(rest)
    return parts
