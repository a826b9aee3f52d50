"""Publishing to a dataset repo through the real huggingface_hub client against a loopback Hub: one commit per
push that makes the repo equal to the folder (byte for byte), a tag per run, stale files deleted, nothing pushed
when a blocking check failed, and the token never printed or stored."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import huggingface_hub
import pytest
import yaml

from persona_factory.config import ConfigError, PublishSettings
from persona_factory.publish.push import HubTarget, hub_target, push_folder
from pipelines.resources import FactoryConfig
from tests.curation_world import clean_world, materialize, write_world
from tests.fake_hub import FakeHub

TOKEN = "hf_loopback_secret_0123456789"
REPO = "persona-org/persona-factory-data"


@pytest.fixture(autouse=True)
def _online_without_xet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client reads these at import: patch the constants as well as the env."""
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture
def hub():
    with FakeHub(TOKEN) as server:
        yield server


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def a_folder(root: Path) -> Path:
    (root / "sft").mkdir(parents=True)
    (root / "figures").mkdir()
    (root / "README.md").write_text("---\nconfigs:\n- config_name: sft\n  data_files: sft/*.parquet\n---\n# Data\n")
    (root / "sft" / "train-00000-of-00001.parquet").write_bytes(os.urandom(50_000))
    (root / "figures" / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(3000))
    return root


def test_a_push_is_one_commit_equal_to_the_folder_and_tagged(hub, tmp_path):
    folder = a_folder(tmp_path / "hub")
    target = HubTarget(REPO, hub.endpoint, private=False, token_env="TOKEN_VAR")
    result = push_folder(folder, target, tag="release-1", message="first", env={"TOKEN_VAR": TOKEN})
    repo = hub.repos[REPO]
    assert len(repo.commits) == 2  # the repo's initial commit, then exactly one for the release
    assert repo.tags == {"release-1": result.commit} and repo.head.oid == result.commit
    assert hub.files(REPO, "release-1") == {**local_files(folder), ".gitattributes": hub.files(REPO)[".gitattributes"]}
    parquet = (folder / "sft" / "train-00000-of-00001.parquet").read_bytes()
    assert ("PUT", f"/lfs-upload/{hashlib.sha256(parquet).hexdigest()}") in hub.requests  # went through LFS

    # an unchanged folder makes no commit but the run still gets its tag
    again = push_folder(folder, target, tag="release-2", message="again", env={"TOKEN_VAR": TOKEN})
    assert again.commit == result.commit and len(repo.commits) == 2 and repo.tags["release-2"] == result.commit

    # a file the folder no longer has is deleted in the same single commit as the changes
    (folder / "figures" / "chart.png").unlink()
    (folder / "README.md").write_text("---\nconfigs: []\n---\n# Data v2\n")
    third = push_folder(folder, target, tag="release-3", message="third", env={"TOKEN_VAR": TOKEN})
    assert len(repo.commits) == 3 and third.deleted == 1
    assert "figures/chart.png" not in hub.files(REPO, "release-3")
    assert "figures/chart.png" in hub.files(REPO, "release-1")  # earlier releases stay readable by their tag
    assert hub.files(REPO, "release-3")["README.md"] == (folder / "README.md").read_bytes()


def test_a_wrong_token_is_refused_and_nothing_is_created(hub, tmp_path):
    folder = a_folder(tmp_path / "hub")
    target = HubTarget(REPO, hub.endpoint, private=False, token_env="TOKEN_VAR")
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
        push_folder(folder, target, tag="t", message="m", env={"TOKEN_VAR": "hf_wrong"})
    assert hub.repos == {}


def test_the_target_needs_a_repo_and_a_token():
    assert hub_target(PublishSettings(), {"HF_TOKEN": TOKEN}) is None
    with pytest.raises(ConfigError, match="MY_TOKEN") as err:
        hub_target(PublishSettings(hub_repo=REPO, token_env="MY_TOKEN"), {})
    assert "publish.token_env" in str(err.value)
    target = hub_target(PublishSettings(hub_repo=REPO, token_env="MY_TOKEN"), {"MY_TOKEN": TOKEN})
    assert TOKEN not in repr(target)


def _settings(out: Path, hub: FakeHub) -> FactoryConfig:
    config = out / "config.yaml"
    config.write_text(yaml.safe_dump({"publish": {"hub_repo": REPO, "endpoint": hub.endpoint,
                                                  "token_env": "PERSONA_HUB_TOKEN"}}))
    return FactoryConfig(preset="tiny", config_path=str(config), output_dir=str(out))


def test_the_pipeline_pushes_only_a_checked_release_and_never_leaks_the_token(hub, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PERSONA_HUB_TOKEN", TOKEN)
    world = clean_world(tmp_path / "images")
    bad = world.rl[0].model_dump(mode="json") | {"record_id": "rl-bad", "kind": "essay"}
    world.extra_rows.append(("rl_records", json.dumps(bad)))
    write_world(world, tmp_path / "pipeline.duckdb")
    settings = _settings(tmp_path, hub)
    with dg.instance_for_test() as instance:
        # a blocking check fails: no export, no request to the Hub at all
        failed = materialize(settings, instance)
        assert not failed.success
        assert hub.repos == {} and hub.requests == [] and not (tmp_path / "hub").exists()
        with duckdb.connect(str(tmp_path / "pipeline.duckdb")) as con:
            assert con.execute("SELECT row_key FROM quarantine WHERE asset = 'check:record_schemas'").fetchall() == [
                ("rl-bad",)]
            con.execute("DELETE FROM rl_records WHERE record->>'$.record_id' = 'rl-bad'")

        result = materialize(settings, instance)
        assert result.success
        [push] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "hub_push"]
        meta = {k: v.value for k, v in push.materialization.metadata.items()}
        events = [str(e) for run in (failed, result) for e in instance.all_logs(run.run_id)]
    assert meta["pushed"] is True and meta["tag"] == f"release-{result.run_id[:8]}"
    assert hub.repos[REPO].tags == {meta["tag"]: meta["commit"]}
    assert {k: v for k, v in hub.files(REPO, meta["tag"]).items() if k != ".gitattributes"} == \
        local_files(tmp_path / "hub")

    # the token went to the Hub as a header only: not in any URL, log, event, output file or the database
    assert not any(TOKEN in path for _, path in hub.requests)
    assert not any(TOKEN in e for e in events)
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
