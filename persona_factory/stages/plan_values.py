"""Typed checks of the short phrases a plan is made of (hobbies, events, routines, goals, skills, dislikes, photo
subjects): a value a teacher proposes must read as a phrase of its kind, because it is later dropped into
templates ("What do I usually do {when}?", an option "Went to a jazz concert"). A first-person sentence, a list,
a dangling clause or a template's own words inside a slot would publish broken text; such a proposal is refused
and the plan takes a vocabulary value instead (counted by kind and reason). The benchmark's item lint reuses the
same checks on every slot it fills.
"""

from __future__ import annotations

import re

PRONOUNS = {"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "you", "your", "yours", "im", "ive",
            "id", "ill"}
DANGLING = {"a", "an", "the", "and", "or", "but", "to", "for", "of", "at", "in", "on", "with", "from", "by", "about",
            "into", "than", "as", "so", "because", "if", "when", "while", "that", "which", "who", "my", "your"}
OPENERS = {"and", "or", "but", "so", "because", "if", "when", "while", "that", "which", "who", "also", "then"}
# past forms that are not also base forms ("read", "set", "put" are both, so they prove neither)
IRREGULAR_PAST = set("""went saw took ran made met built bought ate drove flew won lost began gave got had held found
sang swam rode wrote spent left caught taught brought threw fell felt kept sold told hung sat stood slept wore drew
grew knew became came did dug fought fed led lit paid shot spoke struck swept swung tore woke sent heard chose forgot
shook broke bit hid sought""".split())
TIME_WORDS = set("""every each daily weekly nightly morning mornings evening evenings night nights afternoon
afternoons weekend weekends weekday weekdays monday mondays tuesday tuesdays wednesday wednesdays thursday thursdays
friday fridays saturday saturdays sunday sundays after before breakfast lunch dinner work school dawn sunrise sunset
bedtime noon midnight day days week month""".split())
# template words a value must not carry into a slot ("My first go at ...", "tip for ...")
TEMPLATE_WORDS = ("first go at", "tip for", "photo of", "goal to")
# kind -> (fewest words, most words)
WORD_RANGE = {"hobby": (1, 4), "dislike": (1, 5), "skill": (1, 4), "event": (2, 10), "routine_when": (2, 6),
              "routine_action": (2, 8), "goal": (2, 8), "label": (1, 3)}
KINDS = tuple(WORD_RANGE)


def words_of(value: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", value.lower().replace("'", "")).split()


def value_problem(kind: str, value: str) -> str | None:
    """Why `value` cannot stand as a phrase of `kind` (one of KINDS), or None."""
    if kind not in WORD_RANGE:
        raise ValueError(f"unknown plan value kind {kind!r}; choose one of {KINDS}")
    text = value.strip()
    words = words_of(text)
    lo, hi = WORD_RANGE[kind]
    if not words:
        return "empty"
    if re.search(r"[,;:/&|]|\s-\s|\.\s|[.!?]$", text):
        return "list_or_sentence"
    if re.search(r"[{}\[\]()<>\"]", text):
        return "markup"
    if re.search(r"[^\w\s'.-]|_", text):
        return "odd_characters"  # "jazz_music_jazz_music": an identifier or token salad, not a phrase
    if max(words.count(w) for w in words) > 2:
        return "repetition"
    if PRONOUNS & set(words):
        return "first_or_second_person"
    if not lo <= len(words) <= hi:
        return f"length {len(words)} words, want {lo}-{hi}"
    if words[-1] in DANGLING:
        return "dangling_end"
    if words[0] in OPENERS:
        return "dangling_start"
    if any(t in " ".join(words) for t in TEMPLATE_WORDS):
        return "template_words"
    if kind == "event" and not (words[0].endswith("ed") or words[0] in IRREGULAR_PAST):
        return "event_not_past_tense"
    if kind in ("routine_action", "goal") and (words[0].endswith(("ed", "ing")) or words[0] in IRREGULAR_PAST):
        return "not_base_form"
    if kind == "routine_when" and not TIME_WORDS & set(words):
        return "no_time_word"
    if kind in ("hobby", "dislike", "skill", "label") and text[:1].isupper() and len(words) == 1:
        return "looks_like_a_name"
    if text[:1].isupper() and words[0] in DANGLING and len(words) > 1 and not text.split()[1][:1].isupper():
        return "sentence_case"  # "The science museum": a slot would publish "Tried The science museum"
    return None
