"""Publish a Hub-layout folder to a dataset repo: one commit that makes the repo equal to the folder, then a tag.

One `create_commit` carries every addition and the deletion of files the folder no longer has, so readers see the
previous release or the new one, never a mix (`upload_folder` may split a large folder into several commits when
hf_xet is installed). The token is passed to the client only: it is never logged, returned or written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from persona_factory.config import ConfigError, PublishSettings

KEPT_REMOTE_FILES = {".gitattributes"}  # the Hub's own file: LFS rules for the repo


@dataclass(frozen=True)
class HubTarget:
    repo_id: str
    endpoint: str | None
    private: bool
    token_env: str  # the env var name; the token is read from it at push time only


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit: str
    tag: str
    files: int
    deleted: int

    def as_metadata(self) -> dict:
        return {"repo_id": self.repo_id, "commit": self.commit, "tag": self.tag, "files": self.files,
                "deleted": self.deleted}


def hub_target(settings: PublishSettings, env: Mapping[str, str]) -> HubTarget | None:
    """None when no repo is configured; an error when a repo is configured but its token variable is empty."""
    if not settings.hub_repo:
        return None
    if not env.get(settings.token_env):
        raise ConfigError(f"publish.hub_repo is {settings.hub_repo!r} but the env var {settings.token_env!r} "
                          f"(setting `publish.token_env`) holds no Hub token")
    return HubTarget(settings.hub_repo, settings.endpoint, settings.private, settings.token_env)


def push_folder(folder: Path, target: HubTarget, *, tag: str, message: str,
                env: Mapping[str, str] = os.environ) -> PushResult:
    """Create the dataset repo if needed, commit the folder as the repo's whole content, tag that commit."""
    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} holds no README.md: not a Hub-layout dataset folder")
    api = HfApi(endpoint=target.endpoint, token=env[target.token_env])
    api.create_repo(target.repo_id, repo_type="dataset", private=target.private, exist_ok=True)
    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    remote = set(api.list_repo_files(target.repo_id, repo_type="dataset"))
    stale = sorted(remote - set(local) - KEPT_REMOTE_FILES)
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in local]
    operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
    commit = api.create_commit(target.repo_id, operations, commit_message=message, repo_type="dataset")
    api.create_tag(target.repo_id, tag=tag, tag_message=message, revision=commit.oid, repo_type="dataset",
                   exist_ok=True)
    return PushResult(target.repo_id, commit.oid, tag, len(local), len(stale))
