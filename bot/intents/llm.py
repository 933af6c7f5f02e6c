"""The LLM-backed skill: one per intent, with the offline skill as its fallback.

The request is read once into `Constraints` (`bot.intents.constraints.parse_constraints`, with
the content's knowledge, as the offline skills read it), and then:

1. What the offline skills refuse on principle is refused here the same way, free, without
   calling the LLM: a diet the content cannot honour or does not know, something to leave out
   that cannot be checked ("zorblax-free"), a health condition no advice topic covers, and a
   plan below the safe calorie minimum (`bot.intents.offline.check_honourable`,
   `check_covered`, `daily_target`).
2. The system prompt gets a short constraints clause (`constraints_clause`): the diets, every
   exclusion with what it covers (family data), the calorie target, days, people, and the
   language to answer in. A message about the plan or recipe sent before ("grocery list for
   my plan") keeps the constraints of the request that asked for it (`with_earlier_request`).
3. The answer is checked before it is sent (`bot.intents.answer_check.find_violation`). A
   violating answer is asked for once more, with the violation named; a second violation is
   refused, free, in the person's language. The usage of both calls goes with the answer or
   the refusal, so the COGS of both are recorded.

On an LLM error or timeout the person gets the offline answer (or an apology) and is charged
nothing: the skill raises `SkillFailed` with that reply, and the router voids the hold (issue
#4; docs/economy.md, rule 3).
"""

from __future__ import annotations

import dataclasses
import logging

from bot import replies
from bot.allergies import with_allergies
from bot.errors import SkillFailed
from bot.intents import Skill, SkillAnswer, SkillRequest
from bot.intents.answer_check import Violation, find_violation, readable_terms
from bot.intents.classifier import detect_language
from bot.intents.constraints import DIET_BY_KEY, Constraints, diet_rules, parse_constraints
from bot.intents.offline import (
    check_covered,
    check_honourable,
    daily_target,
    for_channel,
    say,
    shown_diets,
)
from bot.knowledge import Knowledge, load_knowledge
from bot.llm import ChatClient, ChatReply, ChatRequest, LlmError, build_request, combine_usage
from tokens.catalog import IntentSpec, LlmSettings
from tokens.costs import LlmUsage

log = logging.getLogger(__name__)

# Intents whose answers serve food (a plan, a recipe, a list): every mention of an excluded
# ingredient counts. Other answers may name a food to warn about it (`answer_check`).
SERVING_INTENTS = frozenset({"meal_plan", "recipe_search", "grocery_list"})
# Intents that plan days of eating: a calorie target below the safe minimum is refused.
PLAN_INTENTS = frozenset({"meal_plan", "grocery_list"})
MAX_TERMS_SHOWN = 10  # ingredients named per exclusion in the prompt
# The longest constraints clause, characters, and the longest correction a retry adds: the
# system prompt grows by at most their sum (`bot.llm.MAX_CONSTRAINTS_CHARS`), which an
# answer's cost ceiling has to allow for.
MAX_CLAUSE_CHARS = 700
MAX_CORRECTION_CHARS = 299  # with the space before it, the clause and this fit in 1,000
LLM_REFUSAL = (
    "Sorry, I couldn't write an answer that surely leaves out {label}, so I won't send one. "
    "Please ask again, maybe in other words.",
    "Lo siento, no conseguí una respuesta que deje fuera {label} con seguridad, así que no te "
    "la envío. Vuelve a preguntar, quizá con otras palabras.",
)
NOTHING_CHARGED = ("Nothing was charged.", "No se cobró nada.")


def _join(items: list[str], last: str = "or") -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}"


def constraints_clause(c: Constraints, knowledge: Knowledge, target_kcal: int | None = None
                       ) -> str:
    """The constraints of a request, said plainly for the system prompt (in English, for the
    model; the answer's language is the last sentence).

    E.g. "The person's requirements, to follow strictly: Diet: vegetarian (no meat, fish,
    shellfish or cheese made with animal rennet). No peanuts or anything made from peanuts:
    peanut, peanut butter, groundnut, satay, nut butter. Days: 3. Answer in English."

    The clause stays within `MAX_CLAUSE_CHARS` (what an answer's cost ceiling allows for it):
    with many exclusions, fewer of the ingredients each covers are named, down to the names
    alone; the answer check still knows them all.

    Args:
        c: the request's constraints.
        knowledge: the content (what each exclusion covers: bot/content/ingredients.yaml).
        target_kcal: the daily calories to aim at, kcal (a plan's target, goal included);
            None for `c.calories` as asked.

    Returns:
        The clause (never empty: the answer's language is always said).
    """
    for shown in range(MAX_TERMS_SHOWN, -1, -1):
        clause = _clause(c, knowledge, target_kcal, shown)
        if len(clause) <= MAX_CLAUSE_CHARS:
            return clause
    # Still too long (a dozen exclusions): cut at a word, and keep the language.
    language = _language_line(c)
    body = clause.removesuffix(language)[:MAX_CLAUSE_CHARS - len(language) - 5]
    return f"{body.rsplit(' ', 1)[0]} ... {language}"


def _language_line(c: Constraints) -> str:
    return "Answer in Spanish." if c.language == "es" else "Answer in English."


def _clause(c: Constraints, knowledge: Knowledge, target_kcal: int | None, shown: int) -> str:
    """`constraints_clause` naming at most `shown` ingredients per exclusion."""
    parts: list[str] = []
    families = {f.key: f for f in knowledge.families}
    for key in shown_diets(c.hard_diets):
        ruled = [families[k].label for k in knowledge.diet_families.get(key, ())
                 if k in families]
        pairs = [f"{families[a].label} with {families[b].label}"
                 for a, b in knowledge.diet_pairs.get(key, ()) if a in families and b in families]
        rule = f"no {_join(ruled)}" if ruled else ""
        if pairs:
            rule += f"{'; ' if rule else ''}never {_join(pairs)} in the same meal"
        label = DIET_BY_KEY[key].label
        parts.append(f"Diet: {label} ({rule})." if rule else f"Diet: {label}.")
    soft = [DIET_BY_KEY[d].label for d in shown_diets(c.soft_diets)]
    if soft:
        parts.append(f"Preferred: {_join(soft, 'and')}.")
    if c.exclusions and not shown:
        labels = [e.label for e in c.exclusions]
        parts.append(f"No {_join(labels)}, nor anything made from them.")
    for exclusion in c.exclusions if shown else ():
        label = exclusion.label
        terms = [t for t in readable_terms(knowledge, exclusion) if t != label]
        if terms:
            more = ", and the like" if len(terms) > shown else ""
            parts.append(f"No {label} or anything made from {label}: "
                         f"{', '.join(terms[:shown])}{more}.")
        else:
            parts.append(f"No {label}.")
    if c.excluded_slots:
        parts.append(f"Leave out: {_join(sorted(c.excluded_slots), 'and')}.")
    kcal = target_kcal if target_kcal is not None else c.calories
    if kcal is not None:
        parts.append(f"Calories: about {kcal} kcal a day.")
    if c.goal is not None:
        parts.append(f"Goal: {c.goal} weight.")
    if c.days is not None:
        parts.append(f"Days: {c.days}.")
    if c.people is not None:
        parts.append(f"People: {c.people}.")
    conditions = [DIET_BY_KEY[k].label for k in c.unsupported]
    if conditions:
        parts.append(f"They mention a health condition or diet ({_join(conditions, 'and')}): "
                     "give general information only and suggest a doctor or registered "
                     "dietitian.")
    if not parts:
        return _language_line(c)
    return " ".join(["The person's requirements, to follow strictly:", *parts,
                     _language_line(c)])


def with_earlier_request(c: Constraints, history: tuple[tuple[str, str], ...],
                         knowledge: Knowledge) -> Constraints:
    """`c` with the constraints of the request the message refers to.

    "Grocery list for my plan" (`Constraints.refers_to_plan`, `refers_to_recipe`) is about the
    answer sent before, which followed the constraints of the person's previous message: its
    diets and exclusions hold too (as the offline grocery list rebuilds that plan), and its
    calories, days and people unless this message sets its own.

    Args:
        c: the constraints of this message.
        history: earlier (role, text) turns, oldest first.
        knowledge: the content.

    Returns:
        The merged constraints (`c` itself when it refers to nothing, or there is no earlier
        message of the person).
    """
    if not (c.refers_to_plan or c.refers_to_recipe):
        return c
    earlier = next((text for role, text in reversed(history) if role == "user"), None)
    if earlier is None:
        return c
    e = parse_constraints(earlier, knowledge, c.language)
    own = {x.key for x in c.exclusions}
    diets = c.diets | e.diets
    diet_exclusions, pairs = diet_rules(knowledge, diets)
    return dataclasses.replace(
        c, diets=diets, exclusions=c.exclusions + tuple(x for x in e.exclusions
                                                         if x.key not in own),
        diet_exclusions=diet_exclusions, pairs=pairs,
        calories=c.calories if c.calories is not None else e.calories,
        goal=c.goal or e.goal, days=c.days or e.days, people=c.people or e.people,
        excluded_slots=c.excluded_slots | e.excluded_slots)


def correction(violation: Violation) -> str:
    """The sentence that names a violation for the retry ("Your previous answer included
    "eggs", which the person asked to leave out. ...")."""
    label = violation.exclusion.label[:60]
    if violation.diet is None:
        why = "which the person asked to leave out"
    else:
        why = f"which a {DIET_BY_KEY[violation.diet].label} diet rules out"
    text = (f"Your previous answer included \"{violation.said[:60]}\", {why}. Write the answer "
            f"again with no {label} and nothing made from {label}, not even as an option.")
    return text[:MAX_CORRECTION_CHARS]


def refusal(violation: Violation, language: str, channel: str) -> str:
    """The free refusal sent when the LLM broke the constraints twice, in `language`."""
    label = violation.exclusion.label_in(language)
    text = say(language, *LLM_REFUSAL).format(label=label)
    return for_channel(f"{text} {say(language, *NOTHING_CHARGED)}", channel)


def refuse_unanswerable(intent: str, c: Constraints, knowledge: Knowledge,
                        request: SkillRequest) -> int | None:
    """Refuse, free, what the offline skill of `intent` refuses on principle, with its reply.

    Plans and lists (`PLAN_INTENTS`) and recipes: a diet the content cannot honour or does not
    know, or something to leave out it cannot check (`offline.check_honourable`); plans also a
    calorie target below the safe minimum (`offline.daily_target`: 1,200 kcal, 1,500 for men;
    Harvard Health, NIH/NHLBI). Advice, chat and any other intent: such a diet or health
    condition that no advice topic covers (`offline.check_covered`); nutrition facts of a food
    named are never refused.

    Returns:
        The daily calorie target of a plan, kcal, when the person set one (a number, a goal or
        their body); None otherwise.

    Raises:
        SkillFailed: the refusal, with the offline skill's reply ("Nothing was charged.").
    """
    lang = c.language
    if intent in PLAN_INTENTS or intent == "recipe_search":
        check_honourable(c, request, lang)
        if intent in PLAN_INTENTS:
            target = daily_target(c, request, lang)
            if c.calories is not None or c.goal is not None or c.body.complete:
                return target.kcal
        return None
    if intent == "nutrition_analysis" and c.foods:
        return None
    check_covered(c, knowledge, request, lang)
    return None


class LlmSkill:
    """Answers one intent with the LLM, within the person's constraints.

    Args:
        spec: the intent (its `prompt` is sent after the system prompt).
        settings: the catalog's LLM settings (system prompt, LLM tiers).
        chat: the client (usually a `CachedChat` around `OpenAIChat`).
        fallback: the offline skill of the intent, used when the LLM fails; None for none.
        knowledge: the content the constraints are read with; None for the shipped content.
    """

    def __init__(
        self, spec: IntentSpec, settings: LlmSettings, chat: ChatClient, fallback: Skill | None,
        knowledge: Knowledge | None = None,
    ) -> None:
        self.intent = spec.name
        self.spec = spec
        self.settings = settings
        self.chat = chat
        self.fallback = fallback
        self.knowledge = knowledge

    def answer(self, request: SkillRequest) -> SkillAnswer:
        """Ask the LLM within the LLM tier's caps and the person's constraints; check the answer.

        Returns:
            The LLM's answer as it came (source "llm", or "cache"), with the usage of every
            call made for it (the retry's too).

        Raises:
            SkillFailed: nothing is charged, and `reply` says why: the offline skill's refusal
                of what cannot be honoured (no LLM call, `usage` None); the offline answer
                marked as free, or the apology, when the LLM gave no usable answer; a plain
                refusal when the answer broke the constraints twice. `usage` is what the calls
                used (summed, `bot.llm.combine_usage`).
            CatalogError: the catalog has no LLM tier `request.tier`.
        """
        knowledge = self.knowledge or load_knowledge()
        c = with_allergies(parse_constraints(request.text, knowledge, request.language),
                           request.allergies, knowledge)
        c = with_earlier_request(c, request.history, knowledge)
        target = refuse_unanswerable(self.intent, c, knowledge, request)
        tier = self.settings.tier(request.tier)
        clause = constraints_clause(c, knowledge, target)
        advice = self.intent not in SERVING_INTENTS

        def ask(constraints: str, spent: LlmUsage | None) -> ChatReply:
            chat_request: ChatRequest = build_request(
                self.settings, tier, self.spec, request.text, request.history, request.channel,
                constraints=constraints)
            try:
                return self.chat.complete(chat_request)
            except LlmError as exc:
                raise SkillFailed(f"llm: {exc}", reply=self._fallback(request),
                                  usage=combine_usage(spent, exc.usage)) from None

        reply = ask(clause, None)
        violation = find_violation(reply.text, c, knowledge, advice=advice)
        if violation is None:
            return SkillAnswer(reply.text, source="cache" if reply.cached else "llm",
                               usage=reply.usage)
        log.info("llm answer broke the constraints, asking again",
                 extra={"intent": self.intent})  # what was excluded is health data
        retry = ask(f"{clause} {correction(violation)}", reply.usage)
        usage = combine_usage(reply.usage, retry.usage)
        second = find_violation(retry.text, c, knowledge, advice=advice)
        if second is None:
            return SkillAnswer(retry.text, source="cache" if retry.cached else "llm",
                               usage=usage)
        raise SkillFailed(f"llm: the answer broke the constraints twice ({second.exclusion.key})",
                          reply=refusal(second, c.language, request.channel), usage=usage)

    def _fallback(self, request: SkillRequest) -> str:
        lang = request.language or detect_language(request.text)
        if self.fallback is None:
            return replies.skill_failed(lang)
        try:
            offline = self.fallback.answer(request)
        except SkillFailed as exc:
            return exc.reply or replies.skill_failed(lang)
        return f"{replies.offline_free(lang)}\n{offline.text}"
