"""A small, clean world of records for the curation tests, built from the pydantic models and written to DuckDB the
way the producing assets store them (the full record as JSON plus a few flat columns).

Two training personas, one per benchmark bucket; every history has three sessions of three turns of random words
(so unrelated texts share no shingles), images drawn as shapes (so their perceptual hashes are far apart), items
with evidence, SFT/RL records, memory DBs and personality steps. Tests plant one flaw at a time with the helpers.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from persona_factory.schema import (
    BIG_FIVE_TRAITS, BenchmarkItem, BigFive, Dialogue, ImageRecord, Persona, PersonalityStep, PersonaSeed,
    PlannedSession, Profile, Provenance, RLRecord, Session, SFTRecord, TimelinePlan, Turn,
)
from persona_factory import catalog as C
from persona_factory.config import PipelineConfig, QualitySettings
from persona_factory.stages.images import phash_int64
from persona_factory.store import Batch, apply_batch

WORDS = ("amber anchor apple arch autumn badge bakery ballet bamboo banner barley basket beacon beetle bench bicycle "
         "biscuit blanket blossom bonfire bottle bracelet breeze bridge bronze bucket buffalo butter cabin cactus "
         "camera candle canoe canyon carpet carrot castle cathedral cedar cellar chalk cherry chess chimney cider "
         "citrus clover cobalt comet compass copper coral cotton cricket crystal cushion dahlia daisy delta desert "
         "diamond dolphin domino dragon drum dune eagle easel echo ember emerald engine falcon fennel ferry fiddle "
         "fig flannel flute forest fossil fountain fox galaxy garnet ginger glacier globe granite grape gravel "
         "guitar hammock harbor harvest hazel helmet heron hickory honey horizon iris island ivory jacket jasmine "
         "jigsaw juniper kayak kettle kite ladder lagoon lantern lava lemon lilac linen lizard locket lotus maple "
         "marble meadow melon meteor mint mirror mosaic moss mountain mural mustard nectar needle nutmeg oak oasis "
         "olive onyx orchard otter owl paddle palette panda papaya parrot pebble pepper pewter piano pillow pine "
         "planet plum pocket pollen poppy prairie prism pumpkin quartz quill quilt rabbit radish raven reef ribbon "
         "river robin rocket saffron sailboat salmon sapphire satin scarf seashell sequoia shadow silk silver "
         "sketch sparrow spruce squash stone storm sugar summit sunflower swan tangerine teapot thistle thunder "
         "tiger timber topaz tulip tundra turtle umbrella valley velvet violet volcano walnut willow window wizard "
         "yarrow zebra zephyr").split()
TIME0 = "2024-05-0{day} {hour:02d}:{minute:02d}"


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def draw_image(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """Blurred random shapes: photo-like enough that perceptual hashes of different seeds are far apart."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        x1, y1 = x0 + rng.integers(15, size[0] // 2), y0 + rng.integers(15, size[1] // 2)
        d.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img.filter(ImageFilter.GaussianBlur(2))


def store_image(folder: Path, img: Image.Image, name: str, fmt: str = "PNG") -> ImageRecord:
    """Stored as the image pool stores photos: PNG by content hash (a JPEG copy is decoded and stored as PNG)."""
    if fmt != "PNG":
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=60)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    png = buf.getvalue()
    image_id = hashlib.sha256(png).hexdigest()
    path = folder / f"{image_id}.png"
    path.write_bytes(png)
    return ImageRecord(image_id=image_id, source="test", name=name, caption=f"a picture of {name}", labels=[name],
                       path=str(path), width=img.width, height=img.height, phash=phash_int64(img))


def make_persona(pid: str, split: str, seed_text: str) -> Persona:
    rng = random.Random(pid)
    return Persona(
        persona_id=pid, seed=PersonaSeed(seed_id=f"s_{pid}", text=seed_text, source="test"), split=split,
        shard="shard-000", role_description=f"{pid} is {words(rng, 8)}.",
        profile=Profile.model_validate({
            "name": pid.title(), "gender": "female", "age": 30 + len(pid), "preferences": [words(rng, 2)],
            "recent matters": [], "requirements or expectations": "be brief", "update time": "2024-05-01 09:00"}),
        big_five=BigFive(**{t: round(rng.uniform(1.5, 4.5), 2) for t in BIG_FIVE_TRAITS}),
        start_time="2024-05-01 09:00")


def make_dialogue(pid: str, split: str, images: dict[int, str]) -> Dialogue:
    """Three sessions a day apart, three turns 10 minutes apart; turn k shows images[k] when set."""
    rng = random.Random(f"dialogue-{pid}")
    sessions = []
    for s in range(3):
        turns = []
        for j in range(3):
            k = 3 * s + j
            image = images.get(k)
            turns.append(Turn(persona_id=pid, session_index=s, turn_index=k,
                              time=TIME0.format(day=1 + s, hour=9, minute=10 * j),
                              user=("<img> " if image else "") + words(rng, 14), assistant=words(rng, 10),
                              image_id=image))
        sessions.append(Session(persona_id=pid, session_index=s, turns=turns))
    return Dialogue(persona_id=pid, split=split, sessions=sessions)


def make_item(item_id: str, pid: str, bucket: str, query: str, gold: str, evidence_images: list[str] = (),
              question_type: str = "Semantic Information Recall", letter: str = "(a)") -> BenchmarkItem:
    letters = ("(a)", "(b)", "(c)", "(d)")
    options = [w for w in ("chestnut", "lavender", "graphite", "turquoise", "saffron") if w != gold][:3]
    options.insert(letters.index(letter), gold)
    return BenchmarkItem(item_id=item_id, persona_id=pid, bucket=bucket, type="Memory Recall",
                         question_type=question_type, time="2024-05-09 12:00", query=query,
                         choices=dict(zip(letters, options)), answer=letter,
                         evidence_turns=[1], evidence_images=list(evidence_images))


PROVENANCE = Provenance(teacher_model="test-teacher", prompt_templates={"dialogue_session.v1.j2": "0123abcd"},
                        seed=7, code_version="test", preset="tiny", config_hash="cafe")


@dataclass
class World:
    personas: list[Persona]
    dialogues: dict[str, Dialogue]
    images: list[ImageRecord]
    items: list[BenchmarkItem]
    sft: list[SFTRecord]
    rl: list[RLRecord]
    extra_rows: list[tuple[str, str]] = field(default_factory=list)  # (table, raw record JSON) written as is

    def persona(self, pid: str) -> Persona:
        return next(p for p in self.personas if p.persona_id == pid)

    def image(self, name: str) -> ImageRecord:
        return next(i for i in self.images if i.name == name)


def clean_world(image_dir: Path) -> World:
    image_dir.mkdir(parents=True, exist_ok=True)
    images = [store_image(image_dir, draw_image(n), f"shape{n}") for n in range(6)]
    ids = [i.image_id for i in images]
    personas = [make_persona("ptrain1", "train", "A baker who restores old bicycles."),
                make_persona("ptrain2", "train", "A marine biologist who plays jazz piano."),
                make_persona("pbench1", "bench_32k", "A retired pilot who grows orchids."),
                make_persona("pbench2", "bench_128k", "A librarian who climbs mountains.")]
    shown = {"ptrain1": {1: ids[0]}, "ptrain2": {4: ids[1]}, "pbench1": {1: ids[2], 5: ids[3]}, "pbench2": {2: ids[4]}}
    dialogues = {p.persona_id: make_dialogue(p.persona_id, p.split, shown[p.persona_id]) for p in personas}
    items = [
        make_item("q1", "pbench1", "50", "Which colour was the kite I flew at the beach?", "chestnut"),
        make_item("q2", "pbench1", "50", "What did the photo I sent you show?", "lavender", [ids[2]],
                  "Visual Detail Recall", letter="(b)"),
        make_item("q3", "pbench1", "50", "Where do I usually go running on Sundays?", "graphite", letter="(c)"),
        make_item("q4", "pbench2", "200", "Who taught me how to tie climbing knots?", "turquoise", letter="(d)"),
    ]
    conv = lambda n: [{"from": "human", "value": "<image>" * n + "hello"}, {"from": "gpt", "value": "hi"}]  # noqa: E731
    sft = [SFTRecord(record_id=f"sft-{pid}", persona_id=pid, task="semantic_memory", conversations=conv(1),
                     image=[shown[pid][min(shown[pid])]], provenance=PROVENANCE) for pid in ("ptrain1", "ptrain2")]
    rl = [RLRecord(record_id=f"rl-{pid}", persona_id=pid, kind="open_qa", solution="tea",
                   messages=[{"role": "user", "content": "What do I drink?"}], provenance=PROVENANCE)
          for pid in ("ptrain1", "ptrain2")]
    return World(personas, dialogues, images, items, sft, rl)


def personality_steps(d: Dialogue) -> list[PersonalityStep]:
    rng = random.Random(f"steps-{d.persona_id}")
    ema = {t: 3.0 for t in BIG_FIVE_TRAITS}
    steps = []
    for t in d.turns:
        inferred = {trait: rng.randint(1, 5) for trait in BIG_FIVE_TRAITS}
        ema = {trait: round(0.7 * ema[trait] + 0.3 * inferred[trait], 4) for trait in BIG_FIVE_TRAITS}
        steps.append(PersonalityStep(persona_id=d.persona_id, turn_index=t.turn_index, inferred=inferred,
                                     inferred_by="teacher", ema=ema, skipped=[], planned=dict(ema)))
    return steps


def write_world(world: World, db: Path) -> Path:
    """Write every table the curation assets read, as the assets store them; returns the database path."""
    dialogues = [world.dialogues[p.persona_id] for p in world.personas if p.persona_id in world.dialogues]
    shard_of = {p.persona_id: p.shard for p in world.personas}
    batch = Batch("world", tuple(sorted(set(shard_of.values()))))
    batch.add(C.PERSONAS, world.personas, shard_of=shard_of)
    batch.add(C.TIMELINE_PLANS, [
        TimelinePlan(persona_id=d.persona_id, span_days=3, items=[], sessions=[
            PlannedSession(session_index=s.session_index, start=s.turns[0].time, n_turns=len(s.turns))
            for s in d.sessions]) for d in dialogues], shard_of=shard_of)
    batch.add(C.DIALOGUES, dialogues, shard_of=shard_of)
    batch.add(C.DIALOGUE_TURNS, [t for d in dialogues for t in d.turns], shard_of=shard_of)
    batch.add(C.IMAGE_POOL, world.images)
    batch.add(C.BENCHMARK_ITEMS, world.items)
    batch.add(C.SFT_RECORDS, world.sft, shard_of=shard_of)
    batch.add(C.RL_RECORDS, world.rl, shard_of=shard_of)
    batch.add(C.PERSONALITY_STEPS, [s for d in dialogues for s in personality_steps(d)], shard_of=shard_of)
    batch.add(C.MEMORY_DB, [(p.persona_id, p.split, json.dumps(
        {"init_profile": p.profile.to_spec(), "sessions": [],
         "imgs": [t.image_id for t in world.dialogues[p.persona_id].turns if t.image_id]}))
        for p in world.personas if p.persona_id in world.dialogues], shard_of=shard_of)
    with duckdb.connect(str(db)) as con:
        apply_batch(con, batch)
        for table, raw in world.extra_rows:
            con.execute(f"INSERT INTO {table} (record) VALUES (?)", [raw])
    return db


def curate(con: duckdb.DuckDBPyConnection, cfg: PipelineConfig, embedder, quality: QualitySettings | None = None):
    """What the dedup_decisions and release_splits assets do, on an open database: (summary, quarantined)."""
    from quality import dedup, release

    dedup.find_duplicates(con, quality or cfg.quality, embedder)
    summary, quarantined, batch = release.build_release(con, cfg)
    apply_batch(con, batch)
    return summary, quarantined


# ---------------------------------------------------------------------------------------------- planted flaws


def copy_session(world: World, source: str, target: str, session: int, edit_words: int = 0,
                 to_session: int | None = None) -> None:
    """Overwrite the text of `target`'s session `to_session` (default: the same index) with `source`'s session
    (times, indices and images kept), changing `edit_words` words of its first turn."""
    rng = random.Random("edit")
    to_session = session if to_session is None else to_session
    src = world.dialogues[source].sessions[session].turns
    dst = world.dialogues[target]
    new_turns = []
    for a, b in zip(src, dst.sessions[to_session].turns):
        user = a.user.replace("<img> ", "")
        if edit_words:
            tokens = user.split()
            for pos in rng.sample(range(len(tokens)), edit_words):
                tokens[pos] = "zzz" + rng.choice(WORDS)
            user = " ".join(tokens)
            edit_words = 0  # one turn edited: the session stays a near copy
        new_turns.append(b.model_copy(update={"user": ("<img> " if b.image_id else "") + user,
                                              "assistant": a.assistant}))
    sessions = list(dst.sessions)
    sessions[to_session] = dst.sessions[to_session].model_copy(update={"turns": new_turns})
    world.dialogues[target] = dst.model_copy(update={"sessions": sessions})


def show_image(world: World, pid: str, turn_index: int, image_id: str) -> None:
    d = world.dialogues[pid]
    sessions = [s.model_copy(update={"turns": [
        t.model_copy(update={"image_id": image_id, "user": "<img> " + t.user.replace("<img> ", "")})
        if t.turn_index == turn_index else t for t in s.turns]}) for s in d.sessions]
    world.dialogues[pid] = d.model_copy(update={"sessions": sessions})


# ---------------------------------------------------------------------------------------------- the Dagster side

CURATION = ("dedup_decisions", "release_splits")
PUBLISHING = ("hub_dataset", "native_release", "hub_push")


def materialize(settings, instance, selection=CURATION + PUBLISHING):
    """Run the selected curation/publish assets of the real code location (with their blocking checks) on the
    database `write_world` wrote under the settings' output folder; upstream generation assets are not run."""
    import dagster as dg

    from pipelines.definitions import build_definitions

    defs = build_definitions(settings)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    return dg.materialize([*assets, *defs.asset_checks], selection=list(selection), instance=instance,
                          resources=defs.resources, raise_on_error=False)
