"""SMS segment counting, GSM-7 normalisation, SMS capping and message splitting.

Worked examples pin the billing numbers of docs/messaging.md ("Length and segments": 160/153 GSM-7
septets, 70/67 UCS-2 code units, 1,600 characters a message); hypothesis properties check that
capping and splitting always fit and never lose a visible character.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.segments import (
    _GSM_EQUIVALENTS,
    GSM7,
    MAX_MESSAGE_CHARS,
    MORE_HINT,
    UCS2,
    SegmentCount,
    cap_sms,
    count_segments,
    encoding,
    fold_for_gsm,
    normalise_for_gsm,
    split_message,
)

CJK = "字"  # one UTF-16 code unit, outside GSM-7
EMOJI = "😀"  # a surrogate pair: two UTF-16 code units


def visible(text: str) -> str:
    """The non-whitespace characters of ``text``, in order."""
    return "".join(text.split())


# --- count_segments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "segments"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)]
)
def test_gsm7_is_160_septets_then_153_per_segment(length: int, segments: int) -> None:
    assert count_segments("a" * length) == SegmentCount(GSM7, length, segments)


@pytest.mark.parametrize(
    ("length", "segments"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)]
)
def test_ucs2_is_70_code_units_then_67_per_segment(length: int, segments: int) -> None:
    assert count_segments(CJK * length) == SegmentCount(UCS2, length, segments)


def test_euro_is_an_extension_character_worth_two_septets() -> None:
    assert count_segments("€") == SegmentCount(GSM7, 2, 1)
    assert count_segments("a" * 158 + "€") == SegmentCount(GSM7, 160, 1)
    assert count_segments("a" * 159 + "€") == SegmentCount(GSM7, 161, 2)
    assert count_segments("{}[]~\\|^") == SegmentCount(GSM7, 16, 1)


def test_one_emoji_makes_the_message_ucs2_and_counts_two_units() -> None:
    assert encoding("Eat more greens") == GSM7
    assert encoding("Eat more greens " + EMOJI) == UCS2
    assert count_segments("Eat more greens " + EMOJI) == SegmentCount(UCS2, 18, 1)
    # 68 plain characters plus one emoji: 70 units, still one segment; one more character splits.
    assert count_segments("a" * 68 + EMOJI).segments == 1
    assert count_segments("a" * 69 + EMOJI).segments == 2


def test_an_escape_pair_is_not_split_at_the_153_septet_boundary() -> None:
    # 152 septets, then "€" (ESC + e) would straddle septets 153-154: it moves to segment 2,
    # which then holds "€" + 151 letters, and the last letter needs a third segment.
    text = "a" * 152 + "€" + "a" * 152
    assert count_segments(text) == SegmentCount(GSM7, 306, 3)
    # The same length with the euro aligned inside segment 1 packs into 2.
    assert count_segments("a" * 151 + "€" + "a" * 153).segments == 2


def test_a_surrogate_pair_is_not_split_at_the_67_unit_boundary() -> None:
    text = CJK * 66 + EMOJI + CJK * 66
    assert count_segments(text) == SegmentCount(UCS2, 134, 3)
    assert count_segments(CJK * 65 + EMOJI + CJK * 67).segments == 2


def test_an_empty_body_is_never_sent_so_costs_nothing() -> None:
    assert count_segments("") == SegmentCount(GSM7, 0, 0)


def test_an_accented_letter_outside_gsm7_makes_it_ucs2() -> None:
    assert encoding("café") == GSM7  # é is in the GSM 03.38 basic set
    assert encoding("mañana") == GSM7
    assert encoding("está") == UCS2  # á is not


# --- normalise_for_gsm ---------------------------------------------------------------------


def test_smart_quotes_and_dashes_are_normalised_to_keep_gsm7() -> None:
    text = (
        "\u201cDon\u2019t skip breakfast\u201d \u2013 oats\u2026 "
        "2\u00d73 \u2022 eggs\u00a0\u2014 ok"
    )
    assert encoding(text) == UCS2
    assert count_segments(text * 3).segments == 3  # UCS-2: 3 x 47 units in 67-unit segments

    normalised = normalise_for_gsm(text)

    assert normalised == '"Don\'t skip breakfast" - oats... 2x3 - eggs - ok'
    assert encoding(normalised) == GSM7
    assert count_segments(normalised * 3).segments == 1


def test_emoji_and_non_gsm_letters_are_left_alone() -> None:
    text = "Bien hecho, está perfecto \U0001f44d"
    assert normalise_for_gsm(text) == text


def test_zero_width_characters_are_dropped_but_emoji_sequences_keep_their_joiners() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert normalise_for_gsm(f"protein\u200b\u00adshake\ufeff {family}") == f"proteinshake {family}"
    assert normalise_for_gsm("a\u200db") == "ab"


def test_decomposed_letters_are_composed_first() -> None:
    assert normalise_for_gsm("cafe\u0301") == "café"
    assert encoding(normalise_for_gsm("cafe\u0301")) == GSM7


def test_every_replacement_turns_a_non_gsm_character_into_gsm() -> None:
    for char, replacement in _GSM_EQUIVALENTS.items():
        assert encoding(char) == UCS2, repr(char)
        assert encoding(replacement) == GSM7, repr(char)
        assert encoding(normalise_for_gsm(char)) == GSM7, repr(char)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_normalising_is_idempotent(text: str) -> None:
    once = normalise_for_gsm(text)
    assert normalise_for_gsm(once) == once


@settings(max_examples=100, deadline=None)
@given(st.text(st.sampled_from("abc XYZ.,!?'\"-\n" + "".join(_GSM_EQUIVALENTS)), max_size=60))
def test_typographic_text_always_normalises_to_gsm7(text: str) -> None:
    assert encoding(normalise_for_gsm(text)) == GSM7


# --- cap_sms -------------------------------------------------------------------------------

SENTENCES = " ".join(f"Tip {i}: drink a glass of water before each meal." for i in range(1, 13))


def test_a_reply_within_the_cap_is_returned_untouched() -> None:
    assert cap_sms("Short answer. ") == ("Short answer. ", "")
    assert cap_sms("a" * 306) == ("a" * 306, "")


def test_trailing_whitespace_alone_does_not_need_a_continuation() -> None:
    assert cap_sms("Short answer." + " " * 400) == ("Short answer.", "")


def test_a_long_reply_is_cut_at_a_sentence_end_with_the_more_hint() -> None:
    assert count_segments(SENTENCES).segments == 4

    head, rest = cap_sms(SENTENCES)

    assert head.endswith(".\n(Reply MORE for the rest)")
    assert count_segments(head).segments == 2
    assert rest.startswith("Tip ")
    assert visible(head.removesuffix(MORE_HINT) + rest) == visible(SENTENCES)
    # The continuation can itself be capped, until nothing is left.
    head2, rest2 = cap_sms(rest)
    assert head2.endswith(MORE_HINT) and rest2
    assert cap_sms(rest2) == (rest2, "")


def test_without_sentences_the_cut_falls_on_a_word_boundary() -> None:
    text = " ".join(["spinach"] * 60)  # 479 characters, no punctuation

    head, rest = cap_sms(text)

    assert head.removesuffix(MORE_HINT).endswith("spinach")
    assert rest.startswith("spinach")
    assert count_segments(head).segments <= 2


def test_a_single_long_word_is_cut_hard() -> None:
    text = "x" * 400

    head, rest = cap_sms(text, max_segments=1)

    assert head == "x" * (160 - len(MORE_HINT)) + MORE_HINT
    assert rest == "x" * (400 - 160 + len(MORE_HINT))


def test_a_ucs2_reply_is_capped_in_code_units() -> None:
    text = " ".join([f"{EMOJI} Hola, está bien."] * 20)

    head, rest = cap_sms(text)

    assert count_segments(head).encoding == UCS2
    assert count_segments(head).segments <= 2
    assert count_segments(head).units > 100  # uses the room: more than one and a half segments
    assert visible(head.removesuffix(MORE_HINT) + rest) == visible(text)


def test_cap_sms_refuses_an_impossible_cap() -> None:
    with pytest.raises(ValueError, match="max_segments"):
        cap_sms("hello", max_segments=0)
    with pytest.raises(ValueError, match="does not fit"):
        cap_sms("hello", max_segments=1, more_hint="m" * 161)
    with pytest.raises(ValueError, match="no room"):
        cap_sms("a" * 400, max_segments=1, more_hint="m" * 160)


WORDS = st.text(st.sampled_from("abcdé€{ 字" + EMOJI + "\u0301"), min_size=1, max_size=14)
GAPS = st.sampled_from([" ", " ", " ", ". ", "! ", "? ", "\n", "\n\n", ".\n", "  "])
REPLIES = st.one_of(
    st.lists(st.tuples(WORDS, GAPS), max_size=90).map(
        lambda pairs: "".join(word + gap for word, gap in pairs)
    ),
    st.text(max_size=500),
)


@settings(max_examples=100, deadline=None)
@given(text=REPLIES, max_segments=st.integers(1, 4))
def test_capped_head_fits_and_nothing_is_lost(text: str, max_segments: int) -> None:
    head, rest = cap_sms(text, max_segments)

    assert count_segments(head).segments <= max_segments
    if not rest:
        assert head in (text, text.strip())
        return
    assert head.endswith(MORE_HINT)
    body = head.removesuffix(MORE_HINT)
    assert body.strip() and rest.strip()
    assert body == body.strip() and rest == rest.lstrip()
    # head + rest is the stripped text with only whitespace dropped at the cut
    stripped = text.strip()
    assert stripped.startswith(body)
    assert stripped[len(body) :].lstrip() == rest


# --- split_message -------------------------------------------------------------------------


def test_a_message_within_the_limit_is_one_part() -> None:
    assert split_message("Hello.") == ["Hello."]
    assert split_message("a" * MAX_MESSAGE_CHARS) == ["a" * MAX_MESSAGE_CHARS]
    assert split_message("") == []
    assert split_message(" \n ") == []


def test_a_long_message_splits_at_the_last_sentence_before_the_limit() -> None:
    text = ("Oats are filling. " * 60 + "Beans too!\n\n") * 3  # 3,276 characters

    parts = split_message(text)

    assert [len(p) <= MAX_MESSAGE_CHARS for p in parts] == [True, True, True]
    assert all(p.endswith((".", "!")) for p in parts)
    assert visible("".join(parts)) == visible(text)


def test_the_split_prefers_a_sentence_over_a_later_word() -> None:
    assert split_message("One two three. Four five six", limit=20) == [
        "One two three.",
        "Four five six",
    ]


def test_the_split_falls_back_to_line_then_word_then_hard_cut() -> None:
    assert split_message("one two three\nfour five six", limit=20) == [
        "one two three",
        "four five six",
    ]
    assert split_message("one two three four", limit=10) == ["one two", "three four"]
    assert split_message("abcdefghij", limit=4) == ["abcd", "efgh", "ij"]


def test_an_early_sentence_end_does_not_waste_most_of_a_message() -> None:
    # The sentence ends after 3 of 30 characters: the last word boundary is used instead.
    assert split_message("Hi. " + "word " * 10, limit=30) == [
        "Hi. word word word word word",
        "word word word word word",
    ]


def test_a_hard_cut_keeps_combining_marks_with_their_letter() -> None:
    assert split_message("abce\u0301fg", limit=4) == ["abc", "e\u0301fg"]


def test_split_message_refuses_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="limit"):
        split_message("hello", limit=0)


@settings(max_examples=100, deadline=None)
@given(text=REPLIES, limit=st.integers(1, 200))
def test_every_part_fits_and_nothing_is_lost(text: str, limit: int) -> None:
    parts = split_message(text, limit)

    assert all(0 < len(part) <= limit for part in parts)
    assert all(part.strip() for part in parts)
    if len(text) <= limit:
        assert parts == ([text] if text.strip() else [])
        return
    # The parts are the stripped text in order, with only whitespace dropped between them.
    remaining = text.strip()
    for part in parts:
        assert remaining.startswith(part)
        remaining = remaining[len(part) :].lstrip()
    assert remaining == ""


def _walked(text: str) -> tuple[str, int, int]:
    """The segment count by the character-by-character walk, the reference of the fast
    path for texts whose characters each cost one unit."""
    from bot import segments

    enc, costs = segments._unit_costs(text)
    units = sum(costs)
    single, split = ((segments.GSM7_SINGLE_SEPTETS, segments.GSM7_SPLIT_SEPTETS)
                     if enc == segments.GSM7 else
                     (segments.UCS2_SINGLE_UNITS, segments.UCS2_SPLIT_UNITS))
    if units <= single:
        return enc, units, 1 if units else 0
    count, used = 1, 0
    for cost in costs:
        if used + cost > split:
            count, used = count + 1, 0
        used += cost
    return enc, units, count


@settings(max_examples=300)
@given(st.text(st.sampled_from("abc XYZ.,!\né\nñ€[]{}^~|\\\x1b\x0cüΩą漢😀"), max_size=400))
def test_the_fast_count_agrees_with_the_walk(text: str) -> None:
    counted = count_segments(text)
    assert (counted.encoding, counted.units, counted.segments) == _walked(text)


# --- Spanish: folding, boundaries, the hint in the person's language (issue #15) -----------

HINT_ES = "\n(Responde MAS para ver el resto)"


def test_spanish_accents_outside_gsm7_fold_only_when_that_makes_it_gsm7() -> None:
    assert fold_for_gsm("¿Cuántas calorías tiene un plátano? Más o menos 105.") == (
        "¿Cuantas calorias tiene un platano? Mas o menos 105.")
    assert encoding(fold_for_gsm("Él comió jamón, ñoquis y café")) == GSM7  # é, ñ stay
    assert fold_for_gsm("Él comió jamón, ñoquis y café") == "Él comio jamon, ñoquis y café"
    with_emoji = f"Está perfecto {EMOJI}"
    assert fold_for_gsm(with_emoji) == with_emoji  # UCS-2 anyway: the accents stay
    assert fold_for_gsm("plain text") == "plain text"


def test_a_folded_spanish_reply_fits_far_more_in_two_segments() -> None:
    text = " ".join(["Añadí plátano y avena, y mezclá todo con leche."] * 12)
    head, _ = cap_sms(text, more_hint=HINT_ES)
    folded_head, _ = cap_sms(fold_for_gsm(text), more_hint=HINT_ES)
    assert count_segments(head).encoding == UCS2 and len(head) < 140
    assert count_segments(folded_head).encoding == GSM7 and len(folded_head) > 250
    assert folded_head.endswith("." + HINT_ES)


def test_a_cut_never_falls_inside_a_short_quotation() -> None:
    text = 'Snacks can go: text "meal plan, no snacks" and so on'
    assert split_message(text, limit=35) == [
        "Snacks can go: text", '"meal plan, no snacks" and so on']
    curly = "Escribe \u201cplan de comidas sin meriendas\u201d para eso"
    assert split_message(curly, limit=42) == [
        "Escribe \u201cplan de comidas sin meriendas\u201d", "para eso"]
    # A lone inch mark opens no quotation.
    assert split_message('A 12" pan works well for this', limit=20) == [
        'A 12" pan works well', "for this"]


def test_a_cut_prefers_the_start_of_a_list_item() -> None:
    text = "Compra esto para la semana:\n- avena 1 kg\n- leche 2 L\n- platano 6 unidades y mas"
    assert split_message(text, limit=60) == [
        "Compra esto para la semana:\n- avena 1 kg\n- leche 2 L",
        "- platano 6 unidades y mas"]


EN_ES_WORDS = st.sampled_from([
    "comida", "días", "maní", "alérgico", "plátano", "¿qué", "cómo", "avena", "leche", "más",
    "él", "café", "ñandú", "pancakes", "eggs", "without", "meal", "plan", "1800", "kcal",
    "Día", "Breakfast:", "Cena:", "sí", "100g",
])
QUOTE = st.lists(EN_ES_WORDS, min_size=1, max_size=3).map(lambda ws: '"' + " ".join(ws) + '"')
SENTENCE = st.tuples(
    st.lists(st.one_of(EN_ES_WORDS, EN_ES_WORDS, EN_ES_WORDS, QUOTE), min_size=1, max_size=12),
    st.sampled_from([". ", "? ", "! ", ".\n", "\n- ", "\n1. ", " ", ", "]),
).map(lambda pair: " ".join(pair[0]) + pair[1])
EN_ES_TEXTS = st.lists(SENTENCE, min_size=1, max_size=40).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=EN_ES_TEXTS, max_segments=st.integers(2, 4),
       hint=st.sampled_from([MORE_HINT, HINT_ES]), fold=st.booleans())
def test_english_and_spanish_replies_are_cut_whole_words_outside_quotes(
        text: str, max_segments: int, hint: str, fold: bool) -> None:
    """Read on with MORE to the end: every piece within the cap (hint included), the pieces
    give the text back word for word, no word is split, no cut falls inside a quotation."""
    text = fold_for_gsm(text) if fold else text
    pieces: list[str] = []
    rest = text
    for _ in range(200):
        head, rest = cap_sms(rest, max_segments, hint)
        assert count_segments(head).segments <= max_segments
        if not rest:
            pieces.append(head)
            break
        assert head.endswith(hint)
        body = head.removesuffix(hint)
        assert body.count('"') % 2 == 0, body  # never mid-quote
        pieces.append(body)
    assert not rest
    assert " ".join(pieces).split() == text.split()  # whole words, in order, none lost
