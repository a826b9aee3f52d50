"""A schema-following stand-in for the teacher in fast tests: it answers every structured request with a value
that satisfies the request's JSON schema (phrase patterns included), so the stages and the Dagster graph run in
seconds. Its answers go through the real client validation (`validate_completion`), never around it.

    teacher = SchemaTeacher()                      # in process, for stage tests
    FakeOpenAI(responder=openai_responder())       # over loopback HTTP, for graph tests
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from persona_factory.stages.common import PHRASE_SEP
from persona_factory.teacher.client import validate_completion
from persona_factory.teacher.types import RawCompletion, TeacherRequest, TeacherResult, TeacherStats

WORDS = ("sunny calm window garden morning coffee river quiet bright evening market friendly careful simple "
         "walk plan note music paper light").split()
NAMES = ("Maya", "Tom", "Priya", "Lucas", "Elena", "Omar")
T = TypeVar("T")


def phrases_of(pattern: str) -> list[str]:
    """The literal phrases a realization pattern demands, in its first order (see stages.common.phrase_pattern)."""
    body = re.sub(r"(\.\{0,\d+\})+", "", pattern[1:-1]).replace(f"(?:{PHRASE_SEP})?", "")
    if body.startswith("(?:"):
        body = body[3:].split("|")[0]
    return [re.sub(r"\\(.)", r"\1", re.sub(r"\[(\w)\w\]", r"\1", p)) for p in body.split(PHRASE_SEP)]


def _text(rng: random.Random, lo: int, hi: int, pattern: str | None) -> str:
    if pattern:
        text = "Honestly, " + " and ".join(phrases_of(pattern)) + " matter to me."
        if not re.fullmatch(pattern, text) and re.fullmatch(pattern, NAMES[0]):
            text = rng.choice([n for n in NAMES if re.fullmatch(pattern, n)])
        assert re.fullmatch(pattern, text), (pattern, text)
        return text[:hi]
    words = []
    while len(" ".join(words)) < max(lo, min(hi, 24)):
        words.append(rng.choice(WORDS))
    return " ".join(words)[:hi].strip().ljust(lo, "x")


def fill(schema: dict[str, Any], rng: random.Random, defs: dict[str, Any] | None = None) -> Any:
    """A value valid under this JSON schema (the subset pydantic emits for the project's models)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return fill(defs[schema["$ref"].split("/")[-1]], rng, defs)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return fill(next(s for s in schema[key] if s.get("type") != "null"), rng, defs)
    kind = schema.get("type")
    if kind == "object":
        return {k: fill(v, rng, defs) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        if "prefixItems" in schema:
            return [fill(s, rng, defs) for s in schema["prefixItems"]]
        n = max(schema.get("minItems", 0), min(schema.get("maxItems", 2), 2))
        item = schema.get("items", {"type": "string"})
        if item.get("pattern") and item.get("pattern").startswith("^[A-Z]"):
            return rng.sample(NAMES, k=n)
        return [fill(item, rng, defs) for _ in range(n)]
    if kind == "string":
        return _text(rng, schema.get("minLength", 1), schema.get("maxLength", 80), schema.get("pattern"))
    if kind == "integer":
        return rng.randint(schema.get("minimum", 1), min(schema.get("maximum", 5), schema.get("minimum", 1) + 4))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return True
    raise ValueError(f"schema the fake teacher cannot fill: {schema}")


def answer(schema: dict[str, Any] | None, seed: int) -> str:
    rng = random.Random(seed)
    return "A short helpful answer." if schema is None else json.dumps(fill(schema, rng))


class SchemaTeacher:
    """In-process TeacherLike. `override(request) -> str | None` can script a request's raw text."""

    model_id = "schema-teacher"

    def __init__(self, override: Callable[[TeacherRequest], str | None] | None = None):
        self.override = override
        self.requests: list[TeacherRequest] = []
        self.batches: list[list[str]] = []  # the tags of each generate call

    def generate(self, requests: Sequence[TeacherRequest], stats: TeacherStats | None = None) -> list[TeacherResult]:
        out = []
        self.batches.append([r.tag for r in requests])
        for req in requests:
            self.requests.append(req)
            text = self.override(req) if self.override else None
            raw = RawCompletion(text=text if text is not None else answer(req.json_schema(), req.sampling.seed),
                                finish_reason="stop")
            value, reason = validate_completion(req, raw)
            out.append(TeacherResult(key=str(len(self.requests)), tag=req.tag, value=value, failure=reason, attempts=1))
            if stats is not None:
                stats.requests += 1
                stats.sent += 1
                stats.failures += reason is not None
        return out

    async def agenerate(self, requests: Sequence[TeacherRequest], stats: TeacherStats | None = None,
                        priority: int = 0) -> list[TeacherResult]:
        await asyncio.sleep(0)  # the other callers' tasks run meanwhile, as they do while a real teacher answers
        return self.generate(requests, stats)

    def run(self, main: Awaitable[T]) -> T:
        return asyncio.run(main)


def openai_responder() -> Callable[[dict[str, Any]], str]:
    """For tests.fake_openai.FakeOpenAI: content for a chat-completions body, following its response_format."""

    def respond(body: dict[str, Any]) -> str:
        fmt = body.get("response_format") or {}
        schema = fmt.get("json_schema", {}).get("schema") if fmt.get("type") == "json_schema" else None
        return answer(schema, int(body.get("seed") or 0))

    return respond


# Values a capable teacher might propose for personas and plans, varied enough that answers do not repeat across a
# few dozen personas, plus a few it must not (a sentence, a list, a dangling clause) for the typed checks to refuse.
VARIED = {
    "names": """Maya Tom Priya Lucas Elena Omar Hana David Sofia Jonas Amara Leo Nina Kenji Clara Mateo Ines Felix Zara
        Noah Lena Ravi Julia Marco Aisha Ben Mei Oscar Freya Samir Yusuf Alma Teo Rosa Ivan Leila Hugo Nora Emil Vera
        Arjun Lucia Tariq Ada Bruno Kira Milan Esme Idris Greta Pavel Luz Kofi Selma Rafael Dina Otto Wren Joaquin
        Anouk""".split(),
    "hobbies": ["pottery", "bouldering", "birdwatching", "salsa dancing", "sourdough baking", "film photography",
                "chess", "knitting", "woodworking", "yoga", "calligraphy", "cycling", "origami", "archery",
                "sailing", "board games", "hiking", "swimming", "stargazing", "sketching", "fishing", "kayaking",
                "gardening", "beekeeping", "fencing", "rowing", "surfing", "skateboarding", "jazz piano",
                "oil painting", "ceramics", "embroidery", "trail running", "table tennis", "volleyball",
                "mountain biking", "bird photography", "jigsaw puzzles", "model trains", "tap dancing",
                "creative writing", "podcasting", "home brewing", "cheese making", "urban sketching", "judo",
                "rock climbing", "scuba diving", "ice skating", "crochet", "bonsai", "astronomy", "poetry"],
    "events": ["went to a jazz concert", "visited the science museum", "repainted the kitchen", "hiked up a nearby hill",
               "helped a friend move flats", "watched a film festival screening", "took a pottery workshop",
               "went to a pottery fair", "visited an old friend", "ran a charity race", "tried a new ramen place",
               "went camping by the lake", "saw a play at the theatre", "took a day trip to the coast",
               "went to a wedding", "visited an art gallery", "volunteered at a food bank", "went to a flea market",
               "joined a book club", "watched a football match", "built a birdhouse", "planted tomatoes",
               "went ice skating", "hosted a dinner party", "cleaned out the garage", "fixed a leaking tap",
               "adopted a kitten", "went to a karaoke night", "baked a birthday cake", "walked along the river",
               "visited a botanical garden", "went to a comedy show", "sold old books online", "painted a mural",
               "attended a cooking class", "went to a car boot sale", "cycled to the next town",
               "watched the sunrise from the pier", "went to a farm open day", "assembled a new desk"],
    "routines": [("every Saturday morning", "go to the farmers market"), ("after work on Mondays", "swim at the pool"),
                 ("every Sunday evening", "call the family"), ("before breakfast", "write in a journal"),
                 ("on Thursday nights", "play board games"), ("every Friday evening", "cook a big dinner"),
                 ("on weekday mornings", "cycle to work"), ("every Tuesday night", "go to a quiz night"),
                 ("on Sunday mornings", "bake fresh bread"), ("after dinner", "walk around the block"),
                 ("every Wednesday evening", "practise the piano"), ("on Saturday afternoons", "visit the library"),
                 ("before bed", "read a few pages"), ("every morning", "stretch for ten minutes"),
                 ("on Monday nights", "watch a documentary"), ("every weekend", "clean the whole flat"),
                 ("on Friday mornings", "meet friends for coffee"), ("every Sunday afternoon", "water the plants")],
    "goals": ["run a half marathon", "learn conversational Spanish", "save for a trip to Japan", "build a bookshelf",
              "write a short novel", "learn to swim properly", "climb a big mountain", "learn to draw portraits",
              "get a first aid certificate", "start a vegetable garden", "visit ten new cities", "learn sign language",
              "finish a woodworking project", "cook every recipe in one book", "learn to play the cello",
              "pass a driving test", "run a small online shop", "learn to code a website"],
    "dislikes": ["crowded shopping malls", "horror films", "early morning meetings", "very spicy food",
                 "loud music bars", "long queues", "cold coffee", "crowded trains", "reality shows", "traffic jams",
                 "messy kitchens", "late buses", "slow internet", "rainy weekends", "overcooked pasta",
                 "noisy restaurants", "strong perfume", "waiting rooms", "small talk at parties", "muddy boots"],
    "skills": ["watercolor painting", "guitar", "photography", "cooking Thai food", "public speaking", "sewing",
               "carpentry", "touch typing", "baking pastry", "juggling", "drawing comics", "playing the violin",
               "speaking French", "car repair", "flower arranging", "video editing"],
    "bad": ["I have a love for mushrooms", "Mike,Carolina,Davey", "tip for", "when", "going to the", "My garden."],
}


def varied_answers(request: TeacherRequest) -> str | None:
    """An override for SchemaTeacher answering persona and plan requests with VARIED values (seeded by the request),
    a tenth of the lists carrying one value the plan checks must refuse; None for every other request."""
    kind = request.tag.split(":", 1)[0]
    if kind not in ("persona", "plan"):
        return None
    rng = random.Random(request.tag)
    v = VARIED

    def some(values: list, lo: int, hi: int) -> list:
        picked = rng.sample(values, k=rng.randint(lo, hi))
        if picked and isinstance(picked[0], str) and rng.random() < 0.1:
            picked[rng.randrange(len(picked))] = rng.choice(v["bad"])
        return picked

    if kind == "persona":
        draft = json.loads(answer(request.json_schema(), request.sampling.seed))
        draft["name"] = rng.choice(v["names"])
        draft["preferences"] = some(v["hobbies"], 3, 6)
        return json.dumps(draft)
    return json.dumps({
        "people": rng.sample(v["names"], k=rng.randint(3, 6)), "goals": some(v["goals"], 2, 6),
        "routines": [{"when": w, "action": a} for w, a in rng.sample(v["routines"], k=rng.randint(2, 6))],
        "events": some(v["events"], 6, 12), "new_interests": some(v["hobbies"], 1, 4),
        "dislikes": some(v["dislikes"], 1, 4), "skills": some(v["skills"], 1, 3)})
