"""Versioned teacher and SFT prompt templates. A template's content hash goes into every row's provenance."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATE_DIR = Path(__file__).parent / "templates"

# logical name -> versioned file; bump the version when a template's meaning changes
TEMPLATES = {
    "system": "system.v1.j2",
    "persona_enrichment": "persona_enrichment.v1.j2",
    "plan_details": "plan_details.v2.j2",
    "dialogue_session": "dialogue_session.v2.j2",
    "dialogue_turn": "dialogue_turn.v2.j2",
    "realization_judge": "realization_judge.v1.j2",
    "semantic_memory": "semantic_memory.v2.j2",
    "episodic_topic": "episodic_topic.v2.j2",
    "personality_inference": "personality_inference.v2.j2",
    "reasoning_answer": "reasoning_answer.v2.j2",
    "alignment_reply": "alignment_reply.v3.j2",
    "benchmark_tips": "benchmark_tips.v2.j2",
    "benchmark_tip_tier": "benchmark_tip_tier.v1.j2",
    "benchmark_blind": "benchmark_blind.v1.j2",
    # what the trained assistant sees (SFT/RL inputs), PersonaVLM's task formats
    "sft_reasoning_start": "sft_reasoning_start.v2.j2",
    "sft_reasoning_mid": "sft_reasoning_mid.v2.j2",
    "sft_semantic_memory": "sft_semantic_memory.v2.j2",
    "sft_episodic_memory": "sft_episodic_memory.v2.j2",
    "sft_procedural_memory": "sft_procedural_memory.v2.j2",
    "sft_core_memory": "sft_core_memory.v2.j2",
    "sft_personality": "sft_personality.v2.j2",
}

_env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), undefined=StrictUndefined, keep_trailing_newline=False,
                   trim_blocks=True, lstrip_blocks=True, autoescape=False)


def render(template: str, /, **context: object) -> str:
    return _env.get_template(TEMPLATES[template]).render(**context).strip()


@lru_cache(maxsize=None)
def template_hash(name: str) -> str:
    return hashlib.sha256((TEMPLATE_DIR / TEMPLATES[name]).read_bytes()).hexdigest()[:16]


def template_hashes(*names: str) -> dict[str, str]:
    """Hashes of the named templates (all when none named), keyed by versioned file name."""
    return {TEMPLATES[n]: template_hash(n) for n in (names or tuple(TEMPLATES))}
