"""What a config will ask of the teacher, printed before a run starts: turns, requests and tokens.

Expected values from the config's ranges; tokens per request as measured on a tiny-preset run with the embedded
teacher (the response cache records them per request). A sizing aid for GPU time, not a promise: the embedded
135M model rewrites most turns, while the repair share below assumes a capable teacher; whole-session drafts are
sized from the session prompt's parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PipelineConfig, TurnRange

# measured prompt / completion tokens: per request of each stage, per turn for first drafts written a session at a
# time, and per request for first drafts written a turn at a time
SESSION_PROMPT_BASE, SESSION_PROMPT_PER_TURN, SESSION_COMPLETION_PER_TURN = 420, 45, 130
TURN_PROMPT, TURN_COMPLETION = 730, 130
PER_REQUEST = {  # stage -> (prompt tokens, completion tokens)
    "persona": (300, 200), "plan": (330, 260), "repair": (820, 146), "judge": (145, 10), "semantic": (205, 74),
    "topic": (494, 215), "personality": (254, 51), "answer": (604, 110), "alignment": (178, 68), "tips": (130, 120),
    "blind": (203, 14),
}
REPAIR_SHARE = 0.15  # turns rewritten alone after their first draft failed a check
JUDGE_SHARE = 0.06  # turns a lexical check cannot decide on
TOPICS_PER_SESSION = 2.8  # episodic topics a session is segmented into
CANDIDATES_PER_ITEM = 2.7  # benchmark candidates built per kept item (tiny preset), each asked blind


def _mean(r: TurnRange) -> float:
    return (r.min + r.max) / 2


@dataclass(frozen=True)
class CostEstimate:
    personas: int
    turns: int
    sessions: int
    requests: dict[str, int]
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def lines(self) -> list[str]:
        return [
            f"{self.personas} personas, ~{self.turns:,} turns in ~{self.sessions:,} sessions",
            f"~{self.total_requests:,} teacher requests: " + ", ".join(f"{k} {v:,}" for k, v in self.requests.items() if v),
            f"~{self.prompt_tokens:,} prompt tokens and ~{self.completion_tokens:,} completion tokens "
            f"(~{(self.prompt_tokens + self.completion_tokens) / 1e6:.1f} M tokens)",
        ]


def estimate(cfg: PipelineConfig) -> CostEstimate:
    d, s, n = cfg.dialogue, cfg.supervision, cfg.personas
    turns_by_split = {"train": n.train * _mean(d.turns_train), "bench_32k": n.bench_32k * _mean(d.turns_32k),
                      "bench_128k": n.bench_128k * _mean(d.turns_128k)}
    turns = sum(turns_by_split.values())
    per_session = _mean(d.turns_per_session)
    sessions = turns / per_session
    told = turns * (1 - cfg.plan.small_talk_share)
    bench_personas = n.bench_32k + n.bench_128k
    blind_runs = 2 * (1 + len(cfg.benchmark.blind_judges))  # query only and with the profile, per judge
    by_session = d.draft_unit == "session"
    requests = {
        "persona": n.total, "plan": n.total, d.draft_unit: round(sessions if by_session else turns),
        "repair": round(REPAIR_SHARE * turns), "judge": round(JUDGE_SHARE * turns),
        "semantic": round(told), "topic": round(TOPICS_PER_SESSION * sessions), "personality": round(turns),
        "answer": n.train * s.probes_per_persona,
        # training pairs, and the benchmark's pairs written for its items
        "alignment": 2 * (n.train * s.alignment_pairs_per_persona
                          + round(cfg.benchmark.alignment_share * bench_personas * cfg.benchmark.items_per_persona)),
        "tips": bench_personas * cfg.plan.skills,
        "blind": round(blind_runs * CANDIDATES_PER_ITEM * bench_personas * cfg.benchmark.items_per_persona),
    }
    if by_session:
        prompt = SESSION_PROMPT_BASE * sessions + SESSION_PROMPT_PER_TURN * turns
        completion = SESSION_COMPLETION_PER_TURN * turns
    else:
        prompt, completion = TURN_PROMPT * turns, TURN_COMPLETION * turns
    for stage, count in requests.items():
        if stage in PER_REQUEST:
            prompt += PER_REQUEST[stage][0] * count
            completion += PER_REQUEST[stage][1] * count
    return CostEstimate(n.total, round(turns), round(sessions), requests, round(prompt), round(completion))
