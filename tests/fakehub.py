"""A stand-in for the Hugging Face hub on loopback, enough for `huggingface_hub.snapshot_download`.

It serves model repositories from local folders: repository info, the file tree, and the files
under `/{repo}/resolve/{revision}/{path}` with the headers the client reads (commit, ETag, size).
Every request is recorded, so a test can tell a download from a cache hit. Tests only.

    hub = FakeHub({"someone/zebra-lora": adapter_folder})
    with serving(hub.app()) as url:
        use_hub(monkeypatch, url, cache_folder)   # huggingface_hub and bot.models now talk to it
        ...
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response

from bot.models import DEFAULT_HUB_ID

COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


class FakeHub:
    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.requests: list[str] = []

    def files(self, repo: str) -> dict[str, Path]:
        folder = self.repos[repo]
        return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}

    def app(self) -> FastAPI:
        app = FastAPI()

        def repo_of(owner: str, name: str) -> str:
            repo = f"{owner}/{name}"
            if repo not in self.repos:
                raise HTTPException(404, headers={"X-Error-Code": "RepoNotFound"})
            return repo

        @app.middleware("http")
        async def record(request: Request, call_next):
            self.requests.append(f"{request.method} {request.url.path}")
            return await call_next(request)

        @app.get("/api/models/{owner}/{name}")
        @app.get("/api/models/{owner}/{name}/revision/{revision}")
        def info(owner: str, name: str, revision: str = "main"):
            if f"{owner}/{name}" == DEFAULT_HUB_ID:  # what bot.models.hub_reachable asks for
                return {"id": DEFAULT_HUB_ID, "sha": COMMIT, "siblings": []}
            repo = repo_of(owner, name)
            return {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in self.files(repo)]}

        @app.get("/api/models/{owner}/{name}/tree/{revision}")
        def tree(owner: str, name: str, revision: str):
            repo = repo_of(owner, name)
            return [{"type": "file", "path": f, "size": p.stat().st_size, "oid": _sha1(p)}
                    for f, p in self.files(repo).items()]

        @app.api_route("/{owner}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
        def resolve(owner: str, name: str, revision: str, path: str, request: Request):
            file = self.files(repo_of(owner, name)).get(path)
            if file is None:
                raise HTTPException(404, headers={"X-Error-Code": "EntryNotFound"})
            data = file.read_bytes()
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                       "Content-Length": str(len(data))}
            return Response(b"" if request.method == "HEAD" else data, headers=headers,
                            media_type="application/octet-stream")

        return app


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def use_hub(monkeypatch, url: str | None, cache: Path) -> None:
    """Point huggingface_hub (and `bot.models.hub_reachable`) at `url` with `cache` as the hub cache;
    `url=None` is offline. huggingface_hub reads these settings once, at import, hence the patches."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", url is None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if url is None else "0")
    if url is not None:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(hub, "ENDPOINT", url)
        monkeypatch.setattr(hub, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
