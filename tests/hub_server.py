"""A stand-in for the few Hub endpoints huggingface_hub uses to fetch a repository, on 127.0.0.1 (HF_ENDPOINT points at it).

Each served repository is a local folder; ``requests`` logs every (method, path) asked, so a test can check what was
fetched and that nothing was asked at all. Revisions: ``main`` and the repository's one commit; any other is unknown.
"""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


class Hub:
    def __init__(self, repos):
        """``repos``: {owner/name: local folder}."""
        self.repos = {k: Path(v) for k, v in repos.items()}
        self.requests = []
        self.sizes = {}
        """{(repo, file): size} the repository info claims instead of the file's own (a Hub's answer for a huge file)."""
        hub = self
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def answer(self, head):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo = "/".join(parts[2:4])
                    folder = hub.repos.get(repo)
                    if folder is None:
                        return self.send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                    if len(parts) > 5 and parts[4] == "revision" and parts[5] not in ("main", hub.sha(repo)):
                        return self.send(404, b'{"error":"Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
                    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
                    if len(parts) > 4 and parts[4] == "tree":
                        body = json.dumps([{"type": "file", "path": f, "size": (folder / f).stat().st_size,
                                            "oid": hashlib.sha1((folder / f).read_bytes()).hexdigest()} for f in files]).encode()
                        return self.send(200, body, {"Content-Type": "application/json"})
                    blobs = "blobs" in parse_qs(urlparse(self.path).query)  # sizes only when asked, as the Hub does
                    siblings = [{"rfilename": f, **({"size": hub.sizes.get((repo, f), (folder / f).stat().st_size)}
                                                    if blobs else {})} for f in files]
                    body = json.dumps({"id": repo, "modelId": repo, "sha": hub.sha(repo), "private": False,
                                       "siblings": siblings}).encode()
                    return self.send(200, body, {"Content-Type": "application/json"})
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                    folder = hub.repos.get(repo)
                    file = folder / name if folder else None
                    if file is None or not file.is_file():
                        return self.send(404, b"", {"X-Error-Code": "EntryNotFound"})
                    data = file.read_bytes()
                    headers = {"X-Repo-Commit": hub.sha(repo), "ETag": '"' + hashlib.sha256(data).hexdigest() + '"',
                               "Content-Length": str(len(data))}
                    return self.send(200, b"" if head else data, headers, length=len(data))
                self.send(404, b"")
            def send(self, code, body, headers=(), length=None):
                self.send_response(code)
                for key, value in dict(headers).items():
                    self.send_header(key, value)
                if "Content-Length" not in dict(headers):
                    self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if body:
                    self.wfile.write(body)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
    def sha(self, repo):
        return hashlib.sha1(repo.encode()).hexdigest()

    def files_asked(self):
        """The files requested (HEAD or GET of /OWNER/NAME/resolve/COMMIT/FILE), by repository and name."""
        return {(p.split("/")[1] + "/" + p.split("/")[2], "/".join(p.split("/")[5:])) for _, p in self.requests if "/resolve/" in p}

    def close(self):
        self.server.shutdown()
