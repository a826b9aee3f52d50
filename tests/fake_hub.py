"""A loopback stand-in for the Hugging Face Hub: the endpoints huggingface_hub 2.4 calls for create_repo,
create_commit (preupload, LFS batch + PUT, NDJSON commit), list_repo_files, repo_info and create_tag, with
`HF_HUB_DISABLE_XET=1` (xet uploads cannot be served locally).

It keeps what it is sent: every commit's full file tree, LFS objects by sha256 (checked on upload and on commit),
and tags, so a test can read back exactly what arrived. Requests without the expected bearer token get 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".parquet", ".png", ".jpg", ".arrow")  # what the Hub's default .gitattributes routes to LFS
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
REPO_API = re.compile(r"^/api/(?P<type>datasets|models|spaces)/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit|tree|tag|"
                      r"revision)/(?P<rest>.+)$")
LFS_BATCH = re.compile(r"^/(?P<type>datasets|spaces)/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit oid

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve(self, revision: str) -> Commit | None:
        oid = self.tags.get(revision, revision)
        if revision == "main":
            return self.head
        return next((c for c in self.commits if c.oid == oid), None)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeHub:
    """`with FakeHub(token) as hub:` serves on 127.0.0.1 at `hub.endpoint` until the block ends."""

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 hex -> bytes
        self.requests: list[tuple[str, str]] = []  # (method, full path with query)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------------------------------ what tests read

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.repos[repo_id].resolve(revision)
        if commit is None:
            raise KeyError(f"{repo_id} has no revision {revision!r}")
        return dict(commit.files)

    # ------------------------------------------------------------------------------------------ endpoints

    def create_repo(self, body: dict) -> dict:
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = f"{self.endpoint}/{body.get('type', 'model')}s/{repo_id}"
        if repo_id in self.repos:
            raise _Conflict(url)
        repo = Repo(repo_type=body.get("type", "model"), private=body.get("visibility") == "private")
        repo.commits.append(Commit(oid=_commit_oid(None, {".gitattributes": GITATTRIBUTES}, "initial commit"),
                                   parent=None, summary="initial commit", files={".gitattributes": GITATTRIBUTES}))
        self.repos[repo_id] = repo
        return {"url": url, "name": repo_id}

    def preupload(self, repo: Repo, body: dict) -> dict:
        files = []
        for f in body["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES)
            current = repo.head.files.get(f["path"])
            oid = None if current is None else (hashlib.sha256(current).hexdigest() if lfs else git_blob_oid(current))
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        return {"files": files, "commitOid": repo.head.oid}

    def lfs_batch(self, body: dict) -> dict:
        if body.get("operation") != "upload":
            raise HubError(400, "only uploads are served")
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:  # no actions: the client skips objects the server has
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    def lfs_put(self, oid: str, data: bytes) -> dict:
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"uploaded bytes do not hash to {oid}")
        self.lfs[oid] = data
        return {}

    def commit(self, repo: Repo, revision: str, lines: list[dict]) -> dict:
        if revision != "main":
            raise HubError(404, f"branch {revision} not found", "RevisionNotFound")
        header = next(item["value"] for item in lines if item["key"] == "header")
        if header.get("parentCommit") not in (None, repo.head.oid):
            raise HubError(412, "parent commit is not the head of the branch")
        files = dict(repo.head.files)
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                data = self.lfs.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    raise HubError(400, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                files[value["path"]] = data
            elif item["key"] == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
            elif item["key"] == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
        oid = _commit_oid(repo.head.oid, files, header["summary"])
        repo.commits.append(Commit(oid=oid, parent=repo.head.oid, summary=header["summary"], files=files))
        return {"commitUrl": f"{self.endpoint}/datasets/{self._name(repo)}/commit/{oid}", "commitOid": oid}

    def tree(self, repo: Repo, revision: str) -> list[dict]:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"revision {revision} not found", "RevisionNotFound")
        out = []
        for path, data in sorted(commit.files.items()):
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
            out.append(entry)
        return out

    def tag(self, repo: Repo, revision: str, body: dict) -> dict:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"revision {revision} not found", "RevisionNotFound")
        if body["tag"] in repo.tags:
            raise HubError(409, f"tag {body['tag']} already exists")
        repo.tags[body["tag"]] = commit.oid
        return {}

    def revision(self, repo: Repo, repo_id: str, revision: str) -> dict:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"revision {revision} not found", "RevisionNotFound")
        return {"id": repo_id, "sha": commit.oid, "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(commit.files)]}

    def _name(self, repo: Repo) -> str:
        return next(name for name, r in self.repos.items() if r is repo)

    # ------------------------------------------------------------------------------------------ HTTP plumbing

    def _route(self, method: str, path: str, body: bytes):
        if method == "POST" and path == "/api/repos/create":
            return self.create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            try:
                yaml.safe_load(content.split("---")[1]) if content.startswith("---") else None
            except yaml.YAMLError as e:
                raise HubError(400, "invalid YAML", None) from e
            return {"errors": [], "warnings": []}
        if method == "PUT" and path.startswith("/lfs-upload/"):
            return self.lfs_put(path.rsplit("/", 1)[1], body)
        if method == "POST" and (m := LFS_BATCH.match(path)):
            self._repo(m["repo"])
            return self.lfs_batch(json.loads(body))
        m = REPO_API.match(path)
        if m is None:
            raise HubError(404, f"no route for {method} {path}")
        repo, rest = self._repo(m["repo"]), unquote(m["rest"])
        op = m["op"]
        if op == "preupload" and method == "POST":
            return self.preupload(repo, json.loads(body))
        if op == "commit" and method == "POST":
            return self.commit(repo, rest, [json.loads(line) for line in body.splitlines() if line.strip()])
        if op == "tree" and method == "GET":
            return self.tree(repo, rest.split("/", 1)[0])
        if op == "tag" and method == "POST":
            return self.tag(repo, rest, json.loads(body))
        if op == "revision" and method == "GET":
            return self.revision(repo, m["repo"], rest)
        raise HubError(404, f"no route for {method} {path}")

    def _repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repos[repo_id]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlsplit(self.path)
                hub.requests.append((self.command, self.path))
                try:
                    is_upload = self.command == "PUT" and url.path.startswith("/lfs-upload/")  # presigned, no auth
                    if not is_upload and self.headers.get("authorization") != f"Bearer {hub.token}":
                        raise HubError(401, "Invalid credentials in Authorization header")
                    with hub._lock:
                        payload = hub._route(self.command, url.path, body)
                    self._send(200, payload)
                except _Conflict as c:
                    self._send(409, {"error": "You already created this repo", "url": c.url})
                except HubError as e:
                    self._send(e.status, {"error": e.message}, e.code)

            def _send(self, status: int, payload: object, error_code: str | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

        return Handler


class _Conflict(Exception):
    """create_repo on an existing repo: 409 whose body still carries the repo url (the client reads it)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


def _commit_oid(parent: str | None, files: dict[str, bytes], summary: str) -> str:
    h = hashlib.sha1(f"{parent}\n{summary}\n".encode())
    for path in sorted(files):
        h.update(f"{path} {git_blob_oid(files[path])}\n".encode())
    return h.hexdigest()
