"""Does the pipeline keep a GPU fleet busy? The real pipeline (`python -m pipelines.cli materialize`, its real
concurrency settings) runs the `paper` preset's shape — or a stated fraction of its personas, with the same 20-500
turn histories and every stage — against the simulated continuous-batching engine of `bench/engine_sim.py`, which
records how many of its slots are busy at every moment.

Reported: slot occupancy overall (the first and last simulated minute left out) and per Dagster step, the run's
simulated length against the ideal (total slot time of every request / slots), the share of slot time per
request kind, the orchestrator's own CPU seconds per request, and an occupancy-over-time chart (PNG).

    .venv/bin/python bench/fleet_utilization.py run --fraction 0.1 --speedup 8 --chart fleet.png
    .venv/bin/python bench/fleet_utilization.py client --requests 20000      # one process, zero engine latency

`--before <checkout>` (both commands) measures another checkout first with the same settings, each against a fresh
engine, and prints both side by side (`run`: one chart panel each).

`client` measures the teacher client alone: distinct requests built by the real stages go through the pipeline's
`Teacher` (response cache, validation, accounting) to the simulated engine with zero cost; requests per second of
wall time and of the client process's CPU time.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402

MINUTE = 60.0
# request kinds by the name of their output schema (what the engine sees), for the slot-time shares
KINDS = {"PersonaDraft": "persona", "PlanDraft": "plan", "SessionDraft": "dialogue draft", "Verdict": "judge",
         "SemanticDraft": "semantic memory", "SmallTalkDraft": "semantic memory", "TopicDraft": "episodic topic",
         "PersonalityDraft": "personality", "ReplyDraft": "alignment", "AnswerDraft": "reasoning answer",
         "TierTips": "benchmark tips", "TipTiers": "benchmark tips", "BlindAnswer": "benchmark blind"}


def kind_of(schema_name: str) -> str:
    return "dialogue turn" if schema_name.startswith("Turn_") else KINDS.get(schema_name, schema_name)


class SimServer:
    """bench/engine_sim.py in its own process (so the orchestrator has this process's core to itself)."""

    def __init__(self, cost: str, speedup: float, slots: int | None, model: str):
        cmd = [sys.executable, str(REPO / "bench" / "engine_sim.py"), "--cost", cost, "--speedup", str(speedup),
               "--model", model] + (["--slots", str(slots)] if slots else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"the simulated engine did not start ({self.proc.poll()})")

    def report(self) -> dict[str, Any]:
        return httpx.get(self.url.removesuffix("/v1") + "/sim/report", timeout=60).json()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run_pipeline(work: Path, url: str, model: str, preset: str, fraction: float, extra: dict,
                 repo: Path) -> dict[str, Any]:
    """The CLI on a preset (the paper preset's personas scaled by `fraction`), timed, with its CPU time from
    wait4."""
    config: dict[str, Any] = {"teacher": {"model": model, "base_urls": [url]}}
    if preset == "paper":
        counts = {"train": 500, "bench_32k": 100, "bench_128k": 100}
        config["personas"] = {k: max(1, round(v * fraction)) for k, v in counts.items()}
    for key, value in extra.items():
        config.setdefault(key, {}).update(value)
    (work / "factory.yaml").write_text(yaml.safe_dump(config))
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "DAGSTER_DISABLE_TELEMETRY": "1"}
    cmd = [sys.executable, "-m", "pipelines.cli", "materialize", "--preset", preset, "--config",
           str(work / "factory.yaml"), "--output", str(work / "output"), "--yes"]
    start = time.time()
    with open(work / "pipeline.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    end = time.time()
    return {"config": config, "start": start, "end": end, "exit": os.waitstatus_to_exitcode(status),
            "cpu_s": usage.ru_utime + usage.ru_stime, "home": home, "log": work / "pipeline.log"}


def step_windows(home: Path) -> list[tuple[str, float, float]]:
    """(step, start, end) in epoch seconds from the run's Dagster event log."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        starts, out = {}, []
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None or not record.step_key:
                continue
            if event.event_type_value == "STEP_START":
                starts[record.step_key] = record.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and record.step_key in starts:
                out.append((record.step_key, starts[record.step_key], record.timestamp))
    return out


class Occupancy:
    """The engine's running-sequence count as a step function of simulated time."""

    def __init__(self, timeline: list[list[float]], slots: int):
        self.t = [p[0] for p in timeline]
        self.running = [p[1] for p in timeline]
        self.slots = slots

    def mean(self, a: float, b: float) -> float:
        if b <= a:
            return 0.0
        i = max(0, bisect.bisect_right(self.t, a) - 1)
        total, t = 0.0, a
        while t < b:
            nxt = self.t[i + 1] if i + 1 < len(self.t) else b
            seg_end = min(nxt, b)
            total += self.running[i] * max(0.0, seg_end - t)
            t, i = seg_end, i + 1
            if i >= len(self.t):
                total += self.running[-1] * max(0.0, b - t)
                break
        return total / ((b - a) * self.slots)


def analyse(report: dict[str, Any], run: dict[str, Any] | None) -> dict[str, Any]:
    slots = report["slots"]
    reqs = report["requests"]
    if not reqs:
        raise RuntimeError("the engine answered no request")
    first = min(r[1] for r in reqs)
    last = max(r[3] for r in reqs)
    occ = Occupancy(report["timeline"], slots)
    busy_slot_s = sum(r[3] - r[2] for r in reqs)
    by_kind: dict[str, float] = defaultdict(float)
    for r in reqs:
        by_kind[kind_of(r[0])] += r[3] - r[2]
    out: dict[str, Any] = {
        "slots": slots, "speedup": report["speedup"], "requests": len(reqs),
        "prompt_tokens": sum(r[4] for r in reqs), "prompt_tokens_computed": sum(r[5] for r in reqs),
        "completion_tokens": sum(r[6] for r in reqs),
        "sim_span_s": round(last - first, 1), "ideal_s": round(busy_slot_s / slots, 1),
        "span_over_ideal": round((last - first) / (busy_slot_s / slots), 3),
        "occupancy": round(occ.mean(first, last), 4),
        "occupancy_without_first_and_last_minute": round(occ.mean(first + MINUTE, last - MINUTE), 4),
        "engine_lag_s": report["lag_s"],
        "slot_time_share": {k: round(v / busy_slot_s, 4) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
    }
    if run is not None:
        out["wall_s"] = round(run["end"] - run["start"], 1)
        out["orchestrator_cpu_s"] = round(run["cpu_s"], 1)
        out["orchestrator_cpu_ms_per_request"] = round(1000 * run["cpu_s"] / len(reqs), 2)
        out["pipeline_exit"] = run["exit"]
    return out


def per_step(report: dict[str, Any], windows: list[tuple[str, float, float]]) -> list[dict[str, Any]]:
    """Occupancy during each Dagster step, its window mapped to simulated time through the engine's clock log."""
    clock = report["clock_log"]  # [(wall epoch, sim seconds, rate)] at every rate change
    walls = [c[0] for c in clock]

    def sim(epoch: float) -> float:
        i = max(0, bisect.bisect_right(walls, epoch) - 1)
        w, s, rate = clock[i]
        return s + (epoch - w) * rate

    occ = Occupancy(report["timeline"], report["slots"])
    rows = []
    for step, a, b in windows:
        sa, sb = sim(a), sim(b)
        rows.append({"step": step, "wall_s": round(b - a, 1), "sim_s": round(sb - sa, 1),
                     "occupancy": round(occ.mean(sa, sb), 3), "sim_start_s": round(sa, 1)})
    return rows


def chart(panels: list[tuple[str, dict[str, Any], list[dict[str, Any]]]], path: Path) -> None:
    """One occupancy-over-time panel per run (title, engine record, steps), on a shared time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spans = [max(r[3] for r in report["requests"]) - min(r[1] for r in report["requests"]) for _, report, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.4 * len(panels)), dpi=100, squeeze=False)
    for ax, (title, report, steps) in zip(axes[:, 0], panels):
        occ = Occupancy(report["timeline"], report["slots"])
        first = min(r[1] for r in report["requests"])
        last = max(r[3] for r in report["requests"])
        n = 600
        xs = [first + (last - first) * i / n for i in range(n + 1)]
        ys = [occ.mean(xs[i], xs[i + 1]) for i in range(n)]
        ax.fill_between([(x - first) / MINUTE for x in xs[:-1]], ys, step="post", color="#3b7dd8", alpha=0.85, lw=0)
        ax.set_ylim(0, 1.18)
        ax.set_xlim(0, max(spans) / MINUTE)
        ax.set_xlabel("simulated minutes")
        ax.set_ylabel(f"busy slots / {report['slots']}")
        ax.set_title(title, fontsize=10)
        colours = plt.get_cmap("tab20").colors
        shown = [s for s in steps if s["sim_s"] > 0.004 * (last - first)]
        for k, s in enumerate(shown):
            a = (s["sim_start_s"] - first) / MINUTE
            ax.axvspan(a, a + s["sim_s"] / MINUTE, ymin=1.0 / 1.18, ymax=1.0, color=colours[k % 20], alpha=0.9)
            ax.text(a + s["sim_s"] / MINUTE / 2, 1.09 if k % 2 else 1.04, s["step"].split(".")[0], ha="center",
                    fontsize=6.5, clip_on=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def measure(args: argparse.Namespace, repo: Path, keep: Path | None) -> tuple[dict, dict, list]:
    """(summary, engine record, steps) of one pipeline run of `repo` against a fresh simulated engine."""
    extra = json.loads(args.set) if args.set else {}
    server = SimServer(args.cost, args.speedup, args.slots, args.model)
    try:
        with tempfile.TemporaryDirectory(prefix="pf-fleet-") as tmp:
            work = Path(tmp)
            run = run_pipeline(work, server.url, args.model, args.preset, args.fraction, extra, repo)
            report = server.report()
            windows = step_windows(run["home"])
            log_tail = run["log"].read_text()[-3000:]
            if keep:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / "pipeline.log").write_text(run["log"].read_text())
                (keep / "sim_report.json").write_text(json.dumps(report))
    finally:
        server.close()
    if run["exit"] != 0:
        print(log_tail, file=sys.stderr)
    summary = analyse(report, run)
    summary.update(repo=str(repo), commit=git_commit(repo), preset=args.preset, fraction=args.fraction,
                   personas=run["config"].get("personas"), cost_model=args.cost, load_avg=os.getloadavg())
    steps = per_step(report, windows)
    summary["steps"] = steps
    return summary, report, steps


def git_commit(repo: Path) -> str:
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


# the figures compared side by side: (key, higher is better)
COMPARED = (("occupancy_without_first_and_last_minute", True), ("occupancy", True), ("span_over_ideal", False),
            ("sim_span_s", False), ("wall_s", False), ("orchestrator_cpu_ms_per_request", False),
            ("requests_per_s", True), ("client_cpu_ms_per_request", False))


def side_by_side(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each compared figure for every run, and after / before where both have it."""
    table: dict[str, Any] = {}
    for key, _ in COMPARED:
        row = {label: r[key] for label, r in results.items() if key in r}
        if len(row) == 2 and "before" in row and row["before"]:
            row["after/before"] = round(row["after"] / row["before"], 3)
        if row:
            table[key] = row
    return table


def cmd_run(args: argparse.Namespace) -> None:
    repos = {"before": Path(args.before), "after": Path(args.repo)} if args.before else {args.label: Path(args.repo)}
    results, panels = {}, []
    for label, repo in repos.items():
        summary, report, steps = measure(args, repo, Path(args.keep) / label if args.keep else None)
        results[label] = summary
        shape = f"{args.preset}" + (f" x{args.fraction}" if args.preset == "paper" else "")
        panels.append((f"{label} ({summary['commit']}): {shape}, {report['slots']} slots ({args.cost}), occupancy "
                       f"{summary['occupancy_without_first_and_last_minute']:.2f} without the first and last "
                       f"minute, span / ideal {summary['span_over_ideal']:.2f}", report, steps))
    if args.chart:
        chart(panels, Path(args.chart))
    print(json.dumps({"runs": results, "side_by_side": side_by_side(results)}, indent=1))


def cmd_client(args: argparse.Namespace) -> None:
    """The teacher client alone at zero engine latency (the client of the checkout `--repo`); with `--before`,
    that checkout's client too, each in its own process."""
    if args.before:
        results = {}
        for label, repo in (("before", args.before), ("after", args.repo)):
            out = subprocess.run([sys.executable, __file__, "client", "--requests", str(args.requests),
                                  "--concurrency", str(args.concurrency), "--model", args.model, "--repo", repo],
                                 capture_output=True, text=True, check=True)
            results[label] = json.loads(out.stdout) | {"repo": repo, "commit": git_commit(Path(repo))}
        print(json.dumps({"runs": results, "side_by_side": side_by_side(results)}, indent=1))
        return
    sys.path[:0] = [args.repo, str(Path(args.repo) / "tests")]
    from persona_factory.teacher.backends import ServerBackend
    from persona_factory.teacher.cache import ResponseCache
    from persona_factory.teacher.client import Teacher
    from persona_factory.teacher.types import TeacherStats

    requests = sample_requests(args.requests)
    server = SimServer("zero", 1.0, None, args.model)
    try:
        with tempfile.TemporaryDirectory(prefix="pf-client-") as tmp:
            teacher = Teacher(ServerBackend([server.url], args.model, max_concurrency=args.concurrency),
                              ResponseCache(Path(tmp) / "cache.sqlite"))
            stats = TeacherStats()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            teacher.generate(requests, stats)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            teacher.close()
    finally:
        server.close()
    print(json.dumps({"requests": len(requests), "sent": stats.sent, "failures": stats.failures,
                      "wall_s": round(wall, 2), "requests_per_s": round(len(requests) / wall, 1),
                      "client_cpu_s": round(cpu, 2), "client_cpu_ms_per_request": round(1000 * cpu / len(requests), 3),
                      "requests_per_cpu_s": round(len(requests) / cpu, 1), "concurrency": args.concurrency,
                      "load_avg": os.getloadavg()}, indent=1))


def sample_requests(n: int):
    """`n` distinct requests as the supervision stages build them (semantic memory, personality, episodic topics)
    over histories the real persona, plan and dialogue stages write with the schema-following teacher."""
    import dataclasses

    from fake_teacher import SchemaTeacher, varied_answers

    from persona_factory.config import load_config
    from persona_factory.stages import dialogues as D
    from persona_factory.stages import memory as M
    from persona_factory.stages import personality as PE
    from persona_factory.stages import personas as P
    from persona_factory.stages import plans as PL
    from persona_factory.stages.images import load_image_pool
    from persona_factory.teacher.types import TeacherStats

    cfg = load_config("paper", overrides={"personas": {"train": 4, "bench_32k": 0, "bench_128k": 0}})
    teacher = SchemaTeacher(varied_answers)
    with tempfile.TemporaryDirectory() as tmp:
        images, _ = load_image_pool(cfg.image_source, Path(tmp))
        assigned = P.assign_splits(P.load_seeds(cfg.persona_source), cfg)
        personas, _ = P.build_personas(cfg, assigned, teacher.generate(
            [P.enrichment_request(cfg, a.seed, P.sample_big_five(cfg, a.seed)) for a in assigned]))
        plans, _ = PL.build_plans(cfg, personas, teacher.generate([PL.plan_request(cfg, p) for p in personas]),
                                  images)
        dialogues, _ = D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats())
    by_id = {p.persona_id: p for p in personas}
    base = []
    for plan, dialogue in zip(sorted(plans, key=lambda p: p.persona_id), sorted(dialogues, key=lambda d: d.persona_id)):
        persona = by_id[plan.persona_id]
        base += M.semantic_requests(cfg, dialogue, plan) + PE.inference_requests(cfg, persona, dialogue)
        base += M.topic_requests(cfg, persona, dialogue, plan)
    out = []
    for k in range(-(-n // len(base))):  # distinct copies: moved seeds
        out += [dataclasses.replace(r, sampling=r.sampling.with_seed(r.sampling.seed + 104729 * k)) for r in base]
    return out[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the pipeline against the simulated engine")
    run.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    run.add_argument("--fraction", type=float, default=1.0, help="of the paper preset's personas")
    run.add_argument("--speedup", type=float, default=8.0, help="simulated seconds per wall second while busy")
    run.add_argument("--cost", default="h100-7b")
    run.add_argument("--slots", type=int, default=None)
    run.add_argument("--model", default="sim-7b")
    run.add_argument("--set", default=None, help='config overrides as JSON, e.g. \'{"teacher": {"max_concurrency": 512}}\'')
    run.add_argument("--chart", default=None, help="PNG path")
    run.add_argument("--label", default="run")
    run.add_argument("--repo", default=str(REPO), help="the checkout whose pipeline runs (another commit: before/after)")
    run.add_argument("--before", default=None, help="another checkout run first, same settings, side by side")
    run.add_argument("--keep", default=None, help="folder to keep each run's pipeline log and engine record in")
    client = sub.add_parser("client", help="the teacher client alone, zero engine latency")
    client.add_argument("--requests", type=int, default=20000)
    client.add_argument("--concurrency", type=int, default=256)
    client.add_argument("--model", default="sim-7b")
    client.add_argument("--repo", default=str(REPO), help="the checkout whose client runs (before/after)")
    client.add_argument("--before", default=None, help="another checkout measured first, side by side")
    args = parser.parse_args()
    {"run": cmd_run, "client": cmd_client}[args.command](args)


if __name__ == "__main__":
    main()
