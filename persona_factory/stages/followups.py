"""The requests the supervision assets will make about a history, asked as soon as the part of the history they
depend on is final, while other histories are still being written.

A run writes short and long histories together; once the short ones are done, only the long ones' sessions are
left to ask, one at a time each, and the engine would idle behind them. The labels of what is already written
(a session's semantic memories, episodic topics and personality states; a finished training history's alignment
replies) need nothing else, so they are asked meanwhile, behind the histories' own requests. The assets build the
very same requests with the very same functions, listed here, and find the answers in the response cache: what a
run writes does not change, only when the teacher is asked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Iterable

from ..config import PipelineConfig
from ..schema import Dialogue, Persona, TimelinePlan
from ..teacher.client import TeacherUnavailable
from ..teacher.types import TeacherRequest, TeacherStats
from . import alignment, memory, personality
from .dialogues import TeacherLike

BACKGROUND = 1 << 20  # a priority behind every history's own requests (see dialogues.chain_priority)


@dataclass(frozen=True)
class Followup:
    """Requests one asset makes about one persona's history."""

    asset: str
    # (cfg, persona, plan, dialogue, first session not asked yet) -> requests
    build: Callable[[PipelineConfig, Persona, TimelinePlan, Dialogue, int], list[TeacherRequest]]
    # False: the requests for a session depend on the sessions up to it only, so they are final with it
    whole_history: bool = False
    applies: Callable[[Persona], bool] = lambda persona: True


FOLLOWUPS: tuple[Followup, ...] = (
    Followup("memory_targets", lambda cfg, persona, plan, d, start: memory.semantic_requests(cfg, d, plan, start)),
    Followup("memory_targets", lambda cfg, persona, plan, d, start: memory.topic_requests(cfg, persona, d, plan,
                                                                                          start)),
    Followup("personality_trajectories",
             lambda cfg, persona, plan, d, start: personality.inference_requests(cfg, persona, d, start)),
    Followup("alignment_pairs", lambda cfg, persona, plan, d, start: alignment.reply_requests(
        cfg, alignment.pair_specs(cfg, persona, plan, d)), whole_history=True,
        applies=lambda persona: persona.split == "train"),
)


class Prefetch:
    """Asks the follow-ups of the given assets in the background as `dialogues.write_dialogues` reports sessions
    final (its `session_done`); `wait()` returns once all are answered. Answers go to the response cache only."""

    def __init__(self, cfg: PipelineConfig, teacher: TeacherLike, assets: Iterable[str], stats: TeacherStats):
        wanted = set(assets)
        self.cfg, self.teacher, self.stats = cfg, teacher, stats
        self.followups = [f for f in FOLLOWUPS if f.asset in wanted]
        self._asked: dict[str, int] = {}  # persona -> sessions of its dialogue whose follow-ups were asked
        self._tasks: list[asyncio.Task] = []

    def session_done(self, persona: Persona, plan: TimelinePlan, dialogue: Dialogue, sessions: int,
                     whole: bool) -> None:
        start = self._asked.get(persona.persona_id, 0)
        self._asked[persona.persona_id] = len(dialogue.sessions)
        requests = [r for f in self.followups if f.applies(persona) and (whole or not f.whole_history)
                    for r in f.build(self.cfg, persona, plan, dialogue, 0 if f.whole_history else start)]
        if requests:
            self._tasks.append(asyncio.create_task(self.teacher.agenerate(requests, self.stats, BACKGROUND)))

    async def wait(self) -> None:
        """Every follow-up answered or failed; a teacher that became unreachable is left to the assets to report
        (they ask again and fail with the cause)."""
        for outcome in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, TeacherUnavailable):
                raise outcome
