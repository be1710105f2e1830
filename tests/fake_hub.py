"""A small Hub-API server on 127.0.0.1 for upload tests: the endpoints `huggingface_hub` uses to create a repo, a
branch and a commit (all files as regular base64 blobs), recording every request and every file that arrives; and
the model-info request that tells whether a repository exists."""

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


@dataclass
class Commit:
    repo_id: str
    revision: str
    message: str
    files: dict[str, bytes]


@dataclass
class HubRecord:
    token: str
    repos: dict[str, dict] = field(default_factory=dict)
    branches: list[tuple[str, str]] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    unauthorized: int = 0
    validated_metadata: list[dict] = field(default_factory=list)


def _handler(record: HubRecord):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # repo_exists / model_info: the repositories created on this server, else RepoNotFound
            path = self.path.split("?")[0]
            if path.startswith("/api/models/"):
                repo_id = path.removeprefix("/api/models/").split("/revision/")[0].strip("/")
                if repo_id in record.repos:
                    return self.reply(200, {"id": repo_id, "sha": "0" * 40, "siblings": []})
                body = json.dumps({"error": "Repository not found"}).encode()
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return None
            return self.reply(404, {"error": f"not implemented: {path}"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Authorization") != f"Bearer {record.token}":
                record.unauthorized += 1
                return self.reply(401, {"error": "Invalid credentials"})
            path = self.path.split("?")[0]
            parts = path.strip("/").split("/")
            if path == "/api/repos/create":
                request = json.loads(body)
                repo_id = (
                    f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
                )
                record.repos[repo_id] = request
                prefix = "" if request.get("type", "model") == "model" else f"{request['type']}s/"
                return self.reply(200, {"url": f"http://{self.headers['Host']}/{prefix}{repo_id}"})
            if path == "/api/validate-yaml":  # the Hub checks a README's metadata before the commit
                content = json.loads(body)["content"]
                try:
                    metadata = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else None
                except yaml.YAMLError as error:
                    return self.reply(400, {"errors": [{"message": str(error)}]})
                if not isinstance(metadata, dict):
                    return self.reply(400, {"errors": [{"message": "no metadata block"}]})
                record.validated_metadata.append(metadata)
                return self.reply(200, {"errors": [], "warnings": []})
            if len(parts) < 5:
                return self.reply(404, {"error": f"not implemented: {path}"})
            # /api/{type}s/{owner}/{name}/{action}/{revision}
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            if action == "branch":
                record.branches.append((repo_id, revision))
                return self.reply(200, {})
            if action == "preupload":
                files = json.loads(body)["files"]
                return self.reply(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            if action == "commit":
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                files = {
                    line["value"]["path"]: base64.b64decode(line["value"]["content"])
                    for line in lines
                    if line["key"] == "file"
                }
                record.commits.append(Commit(repo_id, revision, header["summary"], files))
                oid = f"{len(record.commits):040x}"
                return self.reply(
                    200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}", "commitOid": oid}
                )
            return self.reply(404, {"error": f"not implemented: {path}"})

    return Handler


class FakeHub:
    """``with FakeHub(token) as hub:`` serves on ``hub.endpoint`` until the block ends; ``hub.record`` has what came."""

    def __init__(self, token: str):
        self.record = HubRecord(token)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.record))
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
