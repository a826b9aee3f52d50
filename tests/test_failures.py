"""What failures do to a run: a teacher failure on the way (transport, a refused request) never reaches a prompt and
does not change the text a run ends with; a dropped turn is counted with the teacher failures; an export killed
half-way leaves nothing a later run keeps; a run never prepares or patches its environment; a run marked for a
retry the Dagster daemon never started is started again, once."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from persona_factory.config import ConfigError, TeacherSettings, load_config
from persona_factory.publish.bundle import atomic_dir
from persona_factory.stages import dialogues as D
from persona_factory.teacher import prepare
from persona_factory.teacher.embedded import resolve_model
from persona_factory.teacher.types import TeacherRequest, TeacherResult, TeacherStats
from pipelines.sensors import MISSED_AFTER_S, RETRY_OF, missed_retries

try:
    from tests.fake_teacher import SchemaTeacher
    from tests.test_histories import _edit_first_drafts, histories, images  # noqa: F401 (a fixture)
except ImportError:
    from fake_teacher import SchemaTeacher
    from test_histories import _edit_first_drafts, histories, images  # noqa: F401

LOST = "transport: HTTP 503 at http://10.1.2.3:8000/v1: <html>upstream down</html>"
LEAKS = ("10.1.2.3", "transport", "503", "upstream")


class LossyTeacher(SchemaTeacher):
    """Answers like SchemaTeacher, but the requests `lose(tag)` picks are lost on the way, `times` times each."""

    def __init__(self, lose, times: int = 1, reason: str = LOST, override=None):
        super().__init__(override)
        self.lose, self.times, self.reason = lose, times, reason
        self.lost: Counter[str] = Counter()

    def generate(self, requests, stats=None):
        out = super().generate(requests, stats)
        for i, req in enumerate(requests):
            if self.lose(req.tag) and self.lost[req.tag] < self.times:
                self.lost[req.tag] += 1
                out[i] = TeacherResult(key=f"lost-{req.tag}", tag=req.tag, failure=self.reason, attempts=3)
        return out


def _text(request: TeacherRequest) -> str:
    return " ".join(p for m in request.messages for p in m.parts() if isinstance(p, str))


def _run(cfg, images, teacher):  # noqa: F811
    personas, plans = histories(cfg, images)
    failures: list[TeacherResult] = []
    dialogues, quarantined = D.generate_dialogues(cfg, teacher, personas, plans, images, TeacherStats(), failures)
    return dialogues, quarantined, failures


@pytest.mark.parametrize("unit", ["turn", "session"])
def test_a_draft_lost_on_the_way_is_asked_again_as_it_was_never_with_the_error(images, unit):  # noqa: F811
    cfg = load_config("tiny", overrides={"dialogue": {"draft_unit": unit}, "teacher": {"max_model_len": 4096}})
    first_session = lambda tag: tag.startswith(f"{unit}:") and (  # noqa: E731
        tag.endswith(":0") if unit == "session" else int(tag.split(":")[2]) < 3)
    lossy = LossyTeacher(first_session)
    dialogues, _, _ = _run(cfg, images, lossy)
    assert sum(lossy.lost.values()) > 0
    assert not [r.tag for r in lossy.requests if any(leak in _text(r) for leak in LEAKS)]
    if unit == "turn":  # asked again unchanged: the run ends with the text it would have had without the loss
        for tag in lossy.lost:
            first, again = [r for r in lossy.requests if r.tag == tag][:2]
            assert (first.messages, first.sampling) == (again.messages, again.sampling)
        baseline, _, _ = _run(cfg, images, SchemaTeacher())
        assert [d.model_dump() for d in dialogues] == [d.model_dump() for d in baseline]
    else:  # a lost session is written again turn by turn, as first drafts
        assert [r for r in lossy.requests if r.tag.startswith("turn:")]


def test_a_refused_judge_is_no_feedback_either(images):  # noqa: F811
    """A turn the judge could not clear is not told the judge's error; its first draft is asked again."""
    cfg = load_config("tiny")
    personas, plans = histories(cfg, images)
    liked = {p.persona_id: i.value for p in plans for i in p.items if i.kind == "preference"}
    deny = _edit_first_drafts("turn", lambda user, pid: user + f" I never liked {liked[pid]} anyway.")
    lossy = LossyTeacher(lambda tag: tag.startswith("judge:"), times=1, override=deny,
                         reason="refused: HTTP 400: prompt too long at http://10.1.2.3:8000/v1")
    _run(cfg, images, lossy)
    assert sum(lossy.lost.values()) > 0
    assert not [r.tag for r in lossy.requests if any(leak in _text(r) for leak in ("10.1.2.3", "refused", "400"))]


def test_a_turn_dropped_for_a_teacher_failure_is_counted_with_the_failures(images):  # noqa: F811
    cfg = load_config("tiny")
    personas, plans = histories(cfg, images)
    victim = f"{plans[0].persona_id}:1"
    lossy = LossyTeacher(lambda tag: tag.split(":", 1)[1] == victim, times=99)
    _, quarantined, failures = _run(cfg, images, lossy)
    assert [(q.row_key, q.rule) for q in quarantined if q.table_name == "dialogue_turns"
            and q.row_key == victim] == [(victim, "transport")]
    assert [(f.tag, f.failure) for f in failures] == [(f"turn:{victim}", LOST)]


# ---------------------------------------------------------------------------------------------- exports


def test_an_export_sweeps_what_a_killed_one_left(tmp_path):
    out = tmp_path / "hub"
    (tmp_path / ".hub.new-killed").mkdir()
    (tmp_path / ".hub.new-killed" / "part.parquet").write_text("half")
    (out).mkdir()
    (out / "README.md").write_text("old release")
    with atomic_dir(out) as tmp:
        (tmp / "README.md").write_text("new release")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]
    assert (out / "README.md").read_text() == "new release"


def test_a_release_moved_aside_by_a_killed_export_is_put_back(tmp_path):
    """Killed between moving the previous release aside and swapping the new one in: the next export starts from
    the previous release (and keeps it if it fails too)."""
    out = tmp_path / "native"
    (tmp_path / ".native.old-killed").mkdir()
    (tmp_path / ".native.old-killed" / "README.md").write_text("previous release")
    with pytest.raises(RuntimeError):
        with atomic_dir(out):
            raise RuntimeError("the export failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"]
    assert (out / "README.md").read_text() == "previous release"


# ---------------------------------------------------------------------------------------------- set-up vs run


def test_a_run_never_downloads_or_converts_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_FACTORY_CACHE", str(tmp_path))
    monkeypatch.setattr(prepare, "_fetch_gguf", lambda: pytest.fail("a run downloaded the model wheel"))
    with pytest.raises(ConfigError, match=r"teacher\.model.*not prepared.*make setup"):
        resolve_model(TeacherSettings())
    assert list(tmp_path.iterdir()) == []


def test_a_run_checks_torchvision_and_never_patches_it(monkeypatch):
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        pytest.skip("torchvision is not installed")
    target = Path(spec.origin).parent / "_meta_registrations.py"
    before = target.read_bytes(), target.stat().st_mtime_ns
    broken = subprocess.CompletedProcess([], 1, "", "RuntimeError: operator torchvision::nms does not exist\n")
    monkeypatch.setattr(prepare, "_torchvision_imports", lambda: broken)
    with pytest.raises(ConfigError, match=r"torchvision::nms does not exist.*make setup"):
        prepare.require_torchvision()
    assert (target.read_bytes(), target.stat().st_mtime_ns) == before


def test_a_failed_run_marked_for_a_retry_that_never_came_is_started_again_once():
    def failed(instance, run_id, **tags):
        instance.add_run(dg.DagsterRun(job_name="shard_job", run_id=run_id, status=dg.DagsterRunStatus.FAILURE,
                                       run_config={"resources": {"settings": {"config": {"seed": 7}}}},
                                       tags={"dagster/partition": "shard-001", "persona_factory/seed": "7", **tags}))

    with dg.instance_for_test() as instance:
        failed(instance, "missed", **{"dagster/will_retry": "true", "dagster/failure_reason": "RUN_WORKER_FAILURE",
                                      "dagster-celery/task_id": "t1"})
        failed(instance, "not-to-retry", **{"dagster/will_retry": "false"})
        failed(instance, "retried", **{"dagster/will_retry": "true", "dagster/auto_retry_run_id": "r1"})
        failed(instance, "retry-pending", **{"dagster/will_retry": "true"})
        instance.add_run(dg.DagsterRun(job_name="shard_job", run_id="child", status=dg.DagsterRunStatus.STARTED,
                                       tags={"dagster/parent_run_id": "retry-pending"}))
        failed(instance, "a-retry-itself", **{"dagster/will_retry": "true", RETRY_OF: "older"})

        assert missed_retries(instance, time.time()) == []  # the daemon may still be about to retry them
        [request] = missed_retries(instance, time.time() + MISSED_AFTER_S + 1)
        assert request.run_key == "retry-missed" and request.job_name == "shard_job"
        assert request.partition_key == "shard-001"
        assert request.run_config == {"resources": {"settings": {"config": {"seed": 7}}}}
        assert request.tags == {"persona_factory/seed": "7", RETRY_OF: "missed"}

        instance.add_run(dg.DagsterRun(job_name="shard_job", run_id="its-retry", status=dg.DagsterRunStatus.STARTED,
                                       tags={RETRY_OF: "missed"}))
        assert missed_retries(instance, time.time() + MISSED_AFTER_S + 1) == []
