"""A local stand-in for the Hugging Face Hub's HTTP API, enough for `huggingface_hub` to create a dataset
repo and upload files to it the legacy (non-Xet) way, for tests. Point the library at it with
``HF_ENDPOINT=<stub.url>`` (and ``HF_HUB_DISABLE_XET=1``: Xet uploads talk to a separate storage
service this stub does not imitate).

As strict as the real Hub where the client could otherwise get away with mistakes: every API call
needs the bearer token; a second create answers 409 with the repo's URL; preupload and commit to a repo
that does not exist answer 404; large and Parquet files must go through LFS (preupload says so), an LFS
upload must hash to its announced sha256 and size, and a commit may only reference LFS objects that
were uploaded. What it stores is readable afterwards (`files`), for tests to compare.

    with HubStub(token="hf_test") as hub:   # HF_ENDPOINT=hub.url in the client's environment
        ...
        hub.files("me/my-data")["README.md"]
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}$")
LFS_PATTERNS = (".parquet", ".arrow", ".bin", ".safetensors", ".gz", ".zip")  # the Hub's default .gitattributes
LFS_SIZE = 10 * 1024 * 1024


# the value sets the Hub documents for dataset card metadata (datasetcard.md); licences: a common subset
LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc0-1.0",
            "odc-by", "odbl", "pddl", "gpl-3.0", "lgpl-3.0", "bsd-3-clause", "openrail", "llama2", "llama3",
            "other", "unknown"}
SIZES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B",
         "10B<n<100B", "100B<n<1T", "n>1T", "other"}
CREATORS = {"found", "crowdsourced", "expert-generated", "machine-generated", "no-annotation", "other"}
MULTILINGUALITY = {"monolingual", "multilingual", "translation", "other"}
TASKS = {"text-generation", "text-classification", "question-answering", "summarization", "translation",
         "text2text-generation", "fill-mask", "token-classification", "conversational", "other"}


def card_metadata_errors(content: str) -> list[str]:
    """What the Hub's YAML validation would refuse in a dataset card's metadata (the fields and value sets it
    documents for datasets)."""
    import yaml

    m = re.match(r"\A---\n(.*?)\n---\n", content, re.S)
    if not m:
        return ["no YAML metadata block at the top of README.md"]
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as exc:
        return [f"YAML does not parse: {exc}"]
    if not isinstance(meta, dict):
        return ["the metadata must be a mapping"]
    errors = []

    def check(key: str, allowed: set[str]) -> None:
        value = meta.get(key)
        for v in ([value] if isinstance(value, str) else value or []):
            if v not in allowed:
                errors.append(f'"{key}" with value "{v}" is not valid')

    check("license", LICENSES)
    check("size_categories", SIZES)
    check("annotations_creators", CREATORS)
    check("language_creators", CREATORS - {"no-annotation"})
    check("multilinguality", MULTILINGUALITY)
    check("task_categories", TASKS)
    for lang in meta.get("language") or []:
        if not re.fullmatch(r"[a-z]{2,3}", str(lang)):
            errors.append(f'"language" with value "{lang}" is not an ISO 639 code')
    for cfg in meta.get("configs") or []:
        if not isinstance(cfg, dict) or not cfg.get("config_name") or not isinstance(cfg.get("data_files"), (list, str)):
            errors.append(f'"configs" entry {cfg!r} needs config_name and data_files')
    return errors


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, obj: Any = None, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj if obj is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.server.stub.token}":
            return True
        self._reply(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def do_POST(self) -> None:  # noqa: N802
        stub, path = self.server.stub, self.path.split("?", 1)[0]
        stub.calls.append(("POST", path))
        if path == "/api/repos/create":
            if self._authorised():
                self._create(json.loads(self._body() or b"{}"))
            return
        if path == "/api/validate-yaml":
            if self._authorised():
                errors = card_metadata_errors(json.loads(self._body()).get("content", ""))
                self._reply(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})
            return
        m = re.fullmatch(rf"/api/datasets/{_REPO}/(?P<what>preupload|commit)/(?P<rev>[\w.-]+)", path)
        if m:
            if not self._authorised():
                return
            if m["repo"] not in stub.repos:
                self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            elif m["rev"] != "main":
                self._reply(404, {"error": f"Invalid rev id: {m['rev']}"}, {"X-Error-Code": "RevisionNotFound"})
            elif m["what"] == "preupload":
                self._preupload(m["repo"], json.loads(self._body()))
            else:
                self._commit(m["repo"], self._body())
            return
        m = re.fullmatch(rf"/datasets/{_REPO}\.git/info/lfs/objects/batch", path)
        if m:
            if self._authorised():
                self._batch(m["repo"], json.loads(self._body()))
            return
        if path == "/lfs/verify":
            obj = json.loads(self._body())
            ok = stub.lfs.get(obj.get("oid")) is not None and len(stub.lfs[obj["oid"]]) == obj.get("size")
            self._reply(200 if ok else 404, {} if ok else {"error": "object not found"})
            return
        self._reply(404, {"error": f"no route {path}"})

    def do_PUT(self) -> None:  # noqa: N802
        stub, path = self.server.stub, self.path.split("?", 1)[0]
        stub.calls.append(("PUT", path))
        m = re.fullmatch(r"/lfs/upload/(?P<oid>[0-9a-f]{64})", path)
        if not m:
            self._reply(404, {"error": f"no route {path}"})
            return
        data = self._body()
        if hashlib.sha256(data).hexdigest() != m["oid"]:
            self._reply(400, {"error": "content does not match the sha256 announced in the batch request"})
            return
        stub.lfs[m["oid"]] = data
        self._reply(200)

    def _create(self, payload: dict[str, Any]) -> None:
        stub = self.server.stub
        name, org = payload.get("name"), payload.get("organization") or stub.user
        if payload.get("type") != "dataset" or not isinstance(name, str) or not _NAME.match(name):
            self._reply(400, {"error": "invalid repo type or name"})
            return
        repo = f"{org}/{name}"
        url = f"{stub.url}/datasets/{repo}"
        if repo in stub.repos:
            self._reply(409, {"error": "You already created this dataset repo", "url": url})
            return
        stub.repos[repo] = {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"}
        stub.private[repo] = payload.get("visibility") == "private" or bool(payload.get("private"))
        self._reply(200, {"url": url, "name": repo, "id": hashlib.sha1(repo.encode()).hexdigest()[:24]})

    def _preupload(self, repo: str, payload: dict[str, Any]) -> None:
        files = payload.get("files")
        if not isinstance(files, list):
            self._reply(400, {"error": "files must be a list"})
            return
        out = []
        for f in files:
            lfs = f["path"].endswith(LFS_PATTERNS) or int(f["size"]) > LFS_SIZE
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": None})
        self._reply(200, {"files": out, "commitOid": "0" * 40})

    def _batch(self, repo: str, payload: dict[str, Any]) -> None:
        stub = self.server.stub
        if repo not in stub.repos:
            self._reply(404, {"error": "Repository not found"})
            return
        if payload.get("operation") != "upload" or payload.get("hash_algo", "sha256") != "sha256":
            self._reply(422, {"error": "only sha256 uploads are supported"})
            return
        objects = []
        for o in payload.get("objects") or []:
            entry: dict[str, Any] = {"oid": o["oid"], "size": o["size"]}
            if o["oid"] not in stub.lfs:  # already stored: no action, as the Hub answers
                entry["actions"] = {"upload": {"href": f"{stub.url}/lfs/upload/{o['oid']}", "header": {}},
                                    "verify": {"href": f"{stub.url}/lfs/verify", "header": {}}}
            objects.append(entry)
        self._reply(200, {"transfer": "basic", "objects": objects})

    def _commit(self, repo: str, body: bytes) -> None:
        stub = self.server.stub
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            self._reply(400, {"error": "the first line must be the commit header with a summary"})
            return
        changes: dict[str, bytes] = {}
        for item in lines[1:]:
            v = item["value"]
            if item["key"] == "file":
                changes[v["path"]] = base64.b64decode(v["content"])
            elif item["key"] == "lfsFile":
                data = stub.lfs.get(v["oid"])
                if data is None or len(data) != v["size"]:
                    self._reply(422, {"error": f"LFS object {v['oid']} for {v['path']} was not uploaded"})
                    return
                changes[v["path"]] = data
            else:
                self._reply(422, {"error": f"unsupported operation {item['key']}"})
                return
        stub.repos[repo].update(changes)
        oid = hashlib.sha1(body).hexdigest()
        stub.commits.setdefault(repo, []).append({"summary": lines[0]["value"]["summary"], "files": sorted(changes)})
        self._reply(200, {"commitUrl": f"{stub.url}/datasets/{repo}/commit/{oid}", "commitOid": oid,
                          "pullRequestUrl": None})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: "HubStub"


class HubStub:
    """The stub server on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(self, token: str = "hf_stub_token", user: str = "stub-user"):
        self.token, self.user = token, user
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        self.commits: dict[str, list[dict[str, Any]]] = {}
        self.lfs: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.stub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="hub-stub")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def files(self, repo: str) -> dict[str, bytes]:
        return dict(self.repos.get(repo, {}))

    def __enter__(self) -> "HubStub":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
