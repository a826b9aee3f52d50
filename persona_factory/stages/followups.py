"""The requests the supervision assets will make about a history, asked as soon as the part of the history they
depend on is final, while other histories are still being written.

A run writes short and long histories together; once the short ones are done, only the long ones' sessions are
left to ask, one at a time each, and the engine would idle behind them. The labels of what is already written
(a session's semantic memories, episodic topics and personality states; a finished training history's alignment
replies) need nothing else, so they are asked meanwhile, behind the histories' own requests. Once a finished
training history's labels are answered, its memory database is replayed from them and its reasoning probes are
prepared (embedding and retrieval, on a worker thread) and their answers asked too. The assets build the very same
requests with the very same functions, listed here, and find the answers in the response cache (and the vectors in
the embedder's): what a run writes does not change, only when the teacher is asked.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..config import PipelineConfig
from ..embeddings import TextEmbedder
from ..schema import Dialogue, ImageRecord, Persona, SemanticMemoryTarget, TimelinePlan
from ..store import dumps
from ..teacher.client import TeacherUnavailable
from ..teacher.types import TRANSPORT, TeacherRequest, TeacherResult, TeacherStats, failure_kind
from . import alignment, memory, personality, reasoning
from .dialogues import TeacherLike
from .distractors import Pools
from .retrieval import retrievers

BACKGROUND = 1 << 20  # a priority behind every history's own requests (see dialogues.chain_priority)
UNLOCKS_NOTHING = 1 << 19  # added for follow-ups nothing else waits on before the dialogues step ends


@dataclass(frozen=True)
class Followup:
    """Requests one asset makes about one persona's history."""

    asset: str
    labels: str  # what the answers are: the memory database of a history is replayed from some of them
    # (cfg, persona, plan, dialogue, first session not asked yet) -> requests
    build: Callable[[PipelineConfig, Persona, TimelinePlan, Dialogue, int], list[TeacherRequest]]
    # False: the requests for a session depend on the sessions up to it only, so they are final with it
    whole_history: bool = False
    applies: Callable[[Persona], bool] = lambda persona: True


FOLLOWUPS: tuple[Followup, ...] = (
    Followup("memory_targets", "semantic",
             lambda cfg, persona, plan, d, start: memory.semantic_requests(cfg, d, plan, start)),
    Followup("memory_targets", "topic",
             lambda cfg, persona, plan, d, start: memory.topic_requests(cfg, persona, d, plan, start)),
    Followup("personality_trajectories", "personality",
             lambda cfg, persona, plan, d, start: personality.inference_requests(cfg, persona, d, start)),
    Followup("alignment_pairs", "alignment", lambda cfg, persona, plan, d, start: alignment.reply_requests(
        cfg, alignment.pair_specs(cfg, persona, plan, d)), whole_history=True,
        applies=lambda persona: persona.split == "train"),
)


# the labels a history's memory database is replayed from (memory_targets, personality_trajectories, memory_db)
DATABASE_LABELS = ("semantic", "topic", "personality")


def memory_database(cfg: PipelineConfig, persona: Persona, plan: TimelinePlan, dialogue: Dialogue,
                    images: Mapping[str, ImageRecord], answers: Mapping[str, list[TeacherResult]]
                    ) -> tuple[list[SemanticMemoryTarget], dict[str, Any]]:
    """A history's semantic targets and memory database (as the memory_db asset stores it) from its label answers,
    built as the memory_targets, personality_trajectories and memory_db assets build them. Raises ValueError
    where the answers do not cover the history (the memory_db asset quarantines such a persona)."""
    semantic, _ = memory.semantic_targets(dialogue, plan, images, answers["semantic"])
    sessions, _ = memory.session_targets(cfg, persona, dialogue, plan, semantic, answers["topic"])
    steps, _ = personality.trajectory(cfg, persona, plan, dialogue, answers["personality"])
    return semantic, json.loads(dumps(memory.replay_user_data(persona, dialogue, semantic, sessions, steps)))


@dataclass
class ReasoningAhead:
    """What a finished training history's reasoning requests need besides its label answers: the plans of the
    run's shards (wrong options come from the history's own shard), the image pool and the run's text embedder."""

    personas: Sequence[Persona]
    plans: Sequence[TimelinePlan]
    images: Sequence[ImageRecord]
    embedder: TextEmbedder
    _pools: dict[str, Pools] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._by_image = {i.image_id: i for i in self.images}

    def requests(self, cfg: PipelineConfig, persona: Persona, plan: TimelinePlan, dialogue: Dialogue,
                 answers: Mapping[str, list[TeacherResult]]) -> list[TeacherRequest]:
        """The reasoning asset's answer requests for this history (none where its database cannot be replayed)."""
        try:
            semantic, user_data = memory_database(cfg, persona, plan, dialogue, self._by_image, answers)
        except ValueError:
            return []
        self.embedder.embed(reasoning.search_texts(cfg, persona, dialogue, plan, semantic, user_data))
        jobs = reasoning.prepare_jobs(cfg, persona, dialogue, plan, semantic, user_data, self.pools(persona.shard),
                                      self._by_image, retrievers(self.embedder))
        return reasoning.answer_requests(cfg, persona, jobs)

    def pools(self, shard: str) -> Pools:
        if shard not in self._pools:
            self._pools[shard] = Pools.of_shard(shard, self.personas, self.plans, self.images)
        return self._pools[shard]


class Prefetch:
    """Asks the follow-ups of the given assets in the background as `dialogues.write_dialogues` reports sessions
    final (its `session_done`); `wait()` returns once all are answered; `close()` stops what is left (always call
    it). Answers go to the response cache only. With `ahead` and every asset the reasoning step needs in the run, a
    finished training history's reasoning answers are asked too, once its labels are answered; a history whose
    reasoning could not be prepared is left to the reasoning asset and named in `not_ahead` with the cause."""

    def __init__(self, cfg: PipelineConfig, teacher: TeacherLike, assets: Iterable[str], stats: TeacherStats,
                 ahead: ReasoningAhead | None = None):
        wanted = set(assets)
        self.cfg, self.teacher, self.stats = cfg, teacher, stats
        self.followups = [f for f in FOLLOWUPS if f.asset in wanted]
        labelled = {f.labels for f in self.followups}
        needs = {"memory_db", "reasoning_trajectories"}  # the database the asset reads must be this run's
        self.ahead = ahead if needs <= wanted and labelled.issuperset(DATABASE_LABELS) else None
        self.not_ahead: dict[str, str] = {}  # persona -> why its reasoning was not asked ahead
        self._asked: dict[str, int] = {}  # persona -> sessions of its dialogue whose follow-ups were asked
        # persona -> its database label tasks, each with the (labels, count) runs of the requests it asked, in order
        self._labels: dict[str, list[tuple[asyncio.Task, list[tuple[str, int]]]]] = {}
        self._tasks: list[asyncio.Task] = []
        # one thread for the embedding and retrieval, so the event loop keeps sending (it still takes turns with
        # the pure-Python parts for the GIL)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="reasoning-ahead") if self.ahead else None
        self._warming = False  # whether the worker was told to load the embedding model
        self._closed = False

    def session_done(self, persona: Persona, plan: TimelinePlan, dialogue: Dialogue, sessions: int,
                     whole: bool) -> None:
        pid = persona.persona_id
        start = self._asked.get(pid, 0)
        self._asked[pid] = len(dialogue.sessions)
        database, others = [], []  # a history's reasoning waits for its database labels only
        runs: list[tuple[str, int]] = []
        for f in self.followups:
            if f.applies(persona) and (whole or not f.whole_history):
                asked = f.build(self.cfg, persona, plan, dialogue, 0 if f.whole_history else start)
                if self.reasons(persona) and f.labels in DATABASE_LABELS:
                    database += asked
                    runs.append((f.labels, len(asked)))
                else:
                    others += asked
        if database:
            labels = self._ask(database, persona, plan)
            labels.add_done_callback(self._warm_embedder)
            self._labels.setdefault(pid, []).append((labels, runs))
        if others:
            self._ask(others, persona, plan)
        if whole and self.reasons(persona):
            self._tasks.append(asyncio.create_task(self._reason(persona, plan, dialogue)))

    def reasons(self, persona: Persona) -> bool:
        """Whether this history's reasoning requests are asked ahead."""
        return self.ahead is not None and persona.split == "train"

    def priority(self, persona: Persona, plan: TimelinePlan) -> int:
        """Behind every history's own requests. The labels a history's reasoning waits for go first, the shortest
        history's first, so each such history's labels are done together and its reasoning is prepared (on the
        worker thread) while the engine still has labels to answer, not all at once after the last of them."""
        return BACKGROUND + (0 if self.reasons(persona) else UNLOCKS_NOTHING) + sum(s.n_turns for s in plan.sessions)

    def _ask(self, requests: list[TeacherRequest], persona: Persona, plan: TimelinePlan) -> asyncio.Task:
        task = asyncio.create_task(self.teacher.agenerate(requests, self.stats, self.priority(persona, plan)))
        self._tasks.append(task)
        return task

    def _warm_embedder(self, labels: asyncio.Task) -> None:
        """The first database labels answered anew mean new texts to embed: the worker loads the embedding model
        then, while the engine is busy with the histories, instead of on the way to the first reasoning requests
        (a re-run answered from the cache never loads it)."""
        if self._warming or self._closed or labels.cancelled() or labels.exception() is not None:
            return
        if any(not r.cached for r in labels.result()):
            self._warming = True
            self._worker.submit(self.ahead.embedder.warm)

    async def _reason(self, persona: Persona, plan: TimelinePlan, dialogue: Dialogue) -> None:
        pid = persona.persona_id
        answers: dict[str, list[TeacherResult]] = {labels: [] for labels in DATABASE_LABELS}
        for task, runs in self._labels.pop(pid, []):
            results = iter(await task)
            for labels, n in runs:
                answers[labels].extend(next(results) for _ in range(n))
        failed = [r for rs in answers.values() for r in rs if not r.ok]
        if any(failure_kind(r.failure or "") == TRANSPORT for r in failed):
            return  # not cached: the assets ask again and may label differently
        if failed and self.cfg.teacher.retry_cached_failures:
            return  # the label assets ask these again in this run and may label differently
        try:
            requests = await asyncio.get_running_loop().run_in_executor(
                self._worker, self.ahead.requests, self.cfg, persona, plan, dialogue, answers)
        except Exception as err:  # the reasoning asset prepares it again, and reports what fails there
            self.not_ahead[pid] = f"{type(err).__name__}: {err}"
            return
        if requests:
            await self.teacher.agenerate(requests, self.stats, self.priority(persona, plan))

    async def wait(self) -> None:
        """Every follow-up answered or failed; a teacher that became unreachable is left to the assets to report
        (they ask again and fail with the cause)."""
        for outcome in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, TeacherUnavailable):
                raise outcome

    def close(self) -> None:
        """Cancels what is still asked and waits out the worker's current history (it uses the run's embedder,
        which is closed after the step)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
