"""What does a request's output grammar cost the engine, per structured-output backend?

    .venv/bin/python bench/grammar_cost.py [--tokens 64]

vLLM builds every request's grammar in the engine process before the request may decode, and masks the vocabulary
at every step. Most of the pipeline's schemas are one request's own (its plan phrases are in them), so an engine
cache never helps them. For the schemas the stages build (phrase-constrained turns, memory wordings, topics and
answers; the fixed persona, plan, personality and alignment schemas for comparison), on the embedded teacher's
tokenizer, side by side in one run:

- xgrammar as vLLM runs it (`GrammarCompiler(max_threads=8)`, cache off, vLLM's compact separators): compile
  seconds, then the mask time per token along a valid answer;
- guidance (llguidance; the grammar from vLLM's own `serialize_guidance_grammar`): grammar and matcher seconds,
  mask time per token along a valid answer.

Each answer is a seeded random walk through the tokens its grammar allows, each backend walking its own (their
layouts of compact JSON need not agree).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persona_factory.config import load_config  # noqa: E402
from persona_factory.stages import memory  # noqa: E402
from persona_factory.stages.alignment import ReplyDraft  # noqa: E402
from persona_factory.stages.dialogues import turn_model  # noqa: E402
from persona_factory.stages.personality import PersonalityDraft  # noqa: E402
from persona_factory.stages.personas import PersonaDraft  # noqa: E402
from persona_factory.stages.plans import PlanDraft  # noqa: E402
from persona_factory.stages.reasoning import answer_model  # noqa: E402
from persona_factory.teacher.prepare import embedded_model_dir  # noqa: E402
from persona_factory.teacher.types import grammar_schema  # noqa: E402


def schemas() -> list[tuple[str, bool, str]]:
    """(name, one request's own, JSON schema) for the kinds of schema the stages send."""
    cfg = load_config("tiny")
    own = [("turn (two phrases)", turn_model(cfg, ("jazz music", "my sister Anna"))),
           ("turn (one phrase)", turn_model(cfg, ("gardening",))),
           ("semantic memory", memory.draft_model("semantic", ("pottery",), True)),
           ("episodic topic", memory.draft_model("topic", ("pottery", "Anna"), True)),
           ("probe answer", answer_model("every Saturday morning", True))]
    fixed = [("persona", PersonaDraft), ("plan", PlanDraft), ("personality", PersonalityDraft),
             ("alignment reply", ReplyDraft)]
    return [(name, True, json.dumps(grammar_schema(m))) for name, m in own] + \
        [(name, False, json.dumps(grammar_schema(m))) for name, m in fixed]


def walk(fill, consume, done, bitmask, vocab: int, tokens: int, rng: random.Random) -> float:
    """Mean seconds per mask along a valid answer: each step one of the tokens the mask allows (the backends lay
    out compact JSON differently, so each walks its own answer)."""
    import torch

    shifts = torch.arange(32, dtype=torch.int32)
    times = []
    while len(times) < tokens and not done():
        t0 = time.perf_counter()
        fill(bitmask)
        times.append(time.perf_counter() - t0)
        allowed = ((bitmask[0].unsqueeze(1) >> shifts) & 1).flatten()[:vocab].nonzero().flatten().tolist()
        token = rng.choice(allowed)
        if not consume(token):
            raise RuntimeError(f"token {token} refused although its mask allowed it")
    return statistics.mean(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="answer tokens along which masks are timed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import llguidance
    import llguidance.hf
    import llguidance.torch as llg_torch
    import xgrammar as xgr
    from transformers import AutoTokenizer
    from vllm.v1.structured_output.backend_guidance import serialize_guidance_grammar
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    compact = load_config("tiny").teacher.compact_json

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer)
    xg_info = xgr.TokenizerInfo.from_huggingface(tokenizer)
    vocab = ll_tokenizer.vocab_size

    print(f"{'schema':<20} {'own':>4} {'xgrammar build s':>17} {'guidance build s':>17} {'build ratio':>12} "
          f"{'xgrammar mask ms':>17} {'guidance mask ms':>17}")
    ratios = []
    for name, own, schema in schemas():
        t0 = time.perf_counter()
        grammar = serialize_guidance_grammar(StructuredOutputOptions.JSON, schema, disable_any_whitespace=compact)
        ll = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=1)
        ll_build = time.perf_counter() - t0
        ll_mask = walk(lambda mask: llg_torch.fill_next_token_bitmask(ll, mask, 0), ll.consume_token, ll.is_stopped,
                       llg_torch.allocate_token_bitmask(1, vocab), vocab, args.tokens, random.Random(args.seed))

        t0 = time.perf_counter()
        compiled = xgr.GrammarCompiler(xg_info, max_threads=8, cache_enabled=False).compile_json_schema(
            schema, any_whitespace=not compact, separators=(",", ":") if compact else None)  # as vLLM asks
        xg_build = time.perf_counter() - t0
        xg = xgr.GrammarMatcher(compiled)
        xg_mask = walk(lambda mask: xg.fill_next_token_bitmask(mask, 0), xg.accept_token, xg.is_terminated,
                       xgr.allocate_token_bitmask(1, xg_info.vocab_size), vocab, args.tokens, random.Random(args.seed))
        ratios.append((own, xg_build / ll_build))
        print(f"{name:<20} {'yes' if own else 'no':>4} {xg_build:>17.3f} {ll_build:>17.4f} {xg_build / ll_build:>12.0f} "
              f"{xg_mask * 1e3:>17.3f} {ll_mask * 1e3:>17.3f}")
    own_ratios = [r for o, r in ratios if o]
    print(f"build time xgrammar / guidance, schemas of one request's own: median {statistics.median(own_ratios):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
