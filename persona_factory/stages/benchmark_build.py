"""The benchmark build as one pure function over the histories: tiered tips (templates, or the teacher's rewording
where a blind tier check agrees), candidates for every registered task, the per-candidate gates (lint, time,
consistency, near-duplicates), selection, the balanced distractor assignment, the gates on the offered options
(options, form, blind), the balance gate, gold letters, Personality Alignment. The asset only loads its inputs and
writes what this returns."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..config import PipelineConfig
from ..schema import (
    BenchmarkCandidate, BenchmarkGateCount, BenchmarkItem, BlindAccuracy, Dialogue, ImageRecord,
    Persona, QuarantineRow, TimelinePlan, bucket_of, fmt_time,
)
from ..teacher.types import TeacherResult, TeacherStats
from . import alignment
from . import benchmark as stage
from . import benchmark_gates as gates
from . import benchmark_select as select
from .dialogues import TeacherLike
from .distractors import Pools, assign_distractors
from .timeline import history_state


@dataclass
class BenchmarkBuild:
    items: list[BenchmarkItem]  # what is published
    candidates: list[BenchmarkCandidate]  # every candidate; rejected ones carry their gate and reason
    gate_counts: list[BenchmarkGateCount]
    blind_accuracy: list[BlindAccuracy]
    quarantined: list[QuarantineRow]
    results: list[TeacherResult]  # every teacher and judge answer, for failure accounting
    users_per_bucket: dict[str, int]
    alignment_asked: int  # items a Personality Alignment pair was written for
    tip_wording: dict[str, int]  # skills whose tips the teacher reworded ("teacher"), else why the templates stayed

    def summary(self) -> dict:
        items = self.items
        per_persona = Counter(i.persona_id for i in items)
        share = lambda n: round(n / max(1, len(items)), 3)  # noqa: E731
        return {
            "items": len(items), "candidates": len(self.candidates),
            "per_task": dict(sorted(Counter(i.question_type for i in items).items())),
            "tasks_present": len({i.question_type for i in items}),
            "items_per_persona": {"min": min(per_persona.values(), default=0),
                                  "max": max(per_persona.values(), default=0)},
            "image_share": share(sum(bool(i.evidence_images) for i in items)),
            "alignment_share": share(sum(i.alignment is not None for i in items)),
            # pairs written for items that passed the pair checks (distinct, no trait names, no length give-away)
            "alignment_pairs": f"{sum(i.alignment is not None for i in items)}/{self.alignment_asked}",
            "users_per_bucket": self.users_per_bucket,
            "tip_wording": self.tip_wording,
            # PersonaVLM's eval.py reads the first 50 folders a bucket lists: more users there go unevaluated
            "buckets_over_50_users": sorted(b for b, n in self.users_per_bucket.items() if n > 50),
            "rejected_per_gate": {g: sum(r.rejected for r in self.gate_counts if r.gate == g) for g in gates.GATES},
            "blind_accuracy": {f"{r.judge}/{r.context}/{r.question_type}": round(r.correct / r.answered, 3)
                               for r in self.blind_accuracy if r.answered},
        }


def tiered_tips(cfg: PipelineConfig, teacher: TeacherLike, skills: list[str],
                stats: TeacherStats) -> tuple[dict[str, dict[str, str]], Counter[str], list[TeacherResult]]:
    """Skill -> tier -> tip for Tiered Explanation Delivery, the program's templates unless the teacher's rewording
    passes the blind tier check; how many skills took each way; every teacher answer."""
    templates = stage.tip_templates(cfg, skills)
    asked = teacher.generate(stage.rewording_requests(cfg, templates), stats) if skills else []
    rewordings, kept_templates = stage.reworded_tips(cfg, skills, asked)
    checks = stage.tier_checks(cfg, rewordings)
    verdicts = teacher.generate([c.request for c in checks], stats) if checks else []
    tips, ways = stage.settle_tips(templates, rewordings, checks, verdicts)
    return tips, kept_templates + ways, [*asked, *verdicts]


@dataclass
class BlindRecord:
    """The blind runs of every item the gate judged, each item with its latest options."""

    asks: dict[str, list[gates.BlindAsk]]  # item id -> its asks
    answers: dict[str, dict[str, list[TeacherResult]]]  # item id -> judge -> results aligned with its asks
    results: dict[str, TeacherResult]  # request key -> answer: every judge answer of every pass, once

    def add(self, asks: list[gates.BlindAsk], answers: dict[str, list[TeacherResult]]) -> None:
        by_item: dict[str, list[int]] = {}
        for k, a in enumerate(asks):
            by_item.setdefault(a.item_id, []).append(k)
        for item_id, ks in by_item.items():
            self.asks[item_id] = [asks[k] for k in ks]
            self.answers[item_id] = {j: [rs[k] for k in ks] for j, rs in answers.items()}
        self.results.update((r.key, r) for rs in answers.values() for r in rs)

    def accuracy(self, judges: list[str], max_correct_share: float) -> list[BlindAccuracy]:
        asks = [a for item in self.asks.values() for a in item]
        answers = {j: [r for item_id in self.asks for r in self.answers[item_id][j]] for j in judges}
        return gates.blind_verdicts(asks, answers, max_correct_share)[1]


def offer(cfg: PipelineConfig, judges: dict[str, TeacherLike], personas: dict[str, Persona],
          bench: dict[str, Dialogue], states: dict, by_image: dict[str, ImageRecord],
          selected: list[BenchmarkCandidate], run: gates.GateRun, judged: BlindRecord,
          stats: TeacherStats) -> list[BenchmarkCandidate]:
    """One pass over a selection: distractors, letters, then the gates on what is offered (options, form, blind,
    balance)."""
    b = cfg.benchmark
    assigned, short = assign_distractors(selected, cfg.seed, b.max_option_length_ratio)
    offered = select.assign_letters(cfg, run.apply("distractors", assigned, short))
    offered = run.apply("options", offered, {c.item.item_id: p for c in offered if (p := gates.offered_problem(
        c, bench[c.item.persona_id], states[c.item.persona_id], by_image))})
    offered = run.apply("form", offered, {c.item.item_id: p for c in offered
                                          if (p := gates.form_problem(c, b.max_option_length_ratio))})
    asks = gates.blind_asks(cfg, offered, personas)
    answers = {name: judge.generate([a.request for a in asks], stats) if asks else [] for name, judge in judges.items()}
    judged.add(asks, answers)
    solved, _ = gates.blind_verdicts(asks, answers, b.blind_max_correct_share)
    offered = run.apply("blind", offered, solved)
    return run.apply("balance", offered, gates.balance_problems(offered))


def gated_selection(cfg: PipelineConfig, judges: dict[str, TeacherLike], personas: dict[str, Persona],
                    bench: dict[str, Dialogue], states: dict, by_image: dict[str, ImageRecord],
                    kept: list[BenchmarkCandidate], run: gates.GateRun,
                    stats: TeacherStats) -> tuple[list[BenchmarkCandidate], BlindRecord]:
    """Selection, then `offer`; an item a gate rejects after selection leaves the candidates and the selection is
    made again from the rest (so a persona's quota and a task's presence are refilled from its other candidates),
    at most `benchmark.refill_rounds` times. What is returned passed every gate in the last pass."""
    judged = BlindRecord({}, {}, {})
    out: set[str] = set()
    final: list[BenchmarkCandidate] = []
    for _ in range(cfg.benchmark.refill_rounds + 1):
        selected = select.select_items(cfg, [c for c in kept if c.item.item_id not in out])
        before = len(run.rejected)
        final = offer(cfg, judges, personas, bench, states, by_image, selected, run, judged, stats)
        newly = {c.item.item_id for c in run.rejected[before:]}
        if not newly:
            break
        out |= newly
    return final, judged


def build_benchmark(cfg: PipelineConfig, teacher: TeacherLike, judges: dict[str, TeacherLike],
                    personas: dict[str, Persona], plans: dict[str, TimelinePlan], dialogues: dict[str, Dialogue],
                    images: list[ImageRecord], stats: TeacherStats) -> BenchmarkBuild:
    """judges: name -> client answering the blind gate (the teacher among them)."""
    bench = {pid: d for pid, d in sorted(dialogues.items()) if personas[pid].split != "train" and d.turns}
    probes = {pid: fmt_time(stage.probe_time(cfg, d)) for pid, d in bench.items()}
    by_image = {i.image_id: i for i in images}
    states = {pid: history_state(personas[pid], plans[pid], d, probes[pid]) for pid, d in bench.items()}

    skills = stage.skills_to_explain([plans[pid] for pid in bench], bench)
    tips, tip_wording, tip_results = tiered_tips(cfg, teacher, skills, stats)
    pools = Pools.of(plans.values(), images)
    candidates = [c for pid, d in bench.items()
                  for c in select.persona_candidates(cfg, personas[pid], d, plans[pid], by_image, pools, tips)]

    run, b = gates.GateRun(), cfg.benchmark
    kept = run.apply_each("lint", candidates, gates.lint)
    kept = run.apply("time", kept, {c.item.item_id: p for c in kept
                                    if (p := gates.time_problem(c, bench[c.item.persona_id]))})
    kept = run.apply_each("consistency", kept, lambda c: gates.consistency(
        c, bench[c.item.persona_id], plans[c.item.persona_id], states[c.item.persona_id], by_image))
    kept = run.apply("near_duplicate", kept, gates.near_duplicates(kept, b.near_duplicate_ratio))

    final, judged = gated_selection(cfg, judges, personas, bench, states, by_image, kept, run, stats)

    specs = {item_id: spec for pid, d in bench.items() for item_id, spec in select.alignment_specs(
        cfg, personas[pid], plans[pid], d, probes[pid], [c for c in final if c.item.persona_id == pid]).items()}
    reply_results = teacher.generate(alignment.reply_requests(cfg, list(specs.values())), stats) if specs else []
    pairs, unpaired = alignment.build_pairs(cfg, list(specs.values()), reply_results)
    by_spec = {p.pair_id: p for p in pairs}
    final = select.attach_alignment(final, {i: by_spec[s.pair_id] for i, s in specs.items() if s.pair_id in by_spec})

    done = {c.item.item_id for c in final} | {c.item.item_id for c in run.rejected}
    asked = {c.item.persona_id for c in final}
    return BenchmarkBuild(
        items=[c.item for c in final],
        candidates=[*run.rejected, *final, *(c for c in kept if c.item.item_id not in done)],
        gate_counts=run.counts(), blind_accuracy=judged.accuracy(list(judges), b.blind_max_correct_share),
        quarantined=[*run.quarantine_rows(), *unpaired],
        results=[*tip_results, *judged.results.values(), *reply_results],
        users_per_bucket=dict(sorted(Counter(bucket_of(personas[pid].split, len(d.turns))
                                             for pid, d in bench.items() if pid in asked).items())),
        alignment_asked=len(specs), tip_wording=dict(sorted(tip_wording.items())))
