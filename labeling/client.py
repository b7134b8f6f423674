"""A thin, fast HTTP client for Label Studio's REST API (legacy ``Token`` authentication).

The connection comes from the campaign: ``labeling.url`` and a token read from the environment
variable ``labeling.token_env``, else from ``labeling.token_file``, else (for a server started by
``medloop labelstudio start``) from ``<campaign>/labelstudio/api-token``. The token is never
logged nor put in an error message. A team's own Label Studio is used by setting the URL and
token; the official SDK client is available through :meth:`LSClient.sdk`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from medloop.config import Campaign

from .errors import LabelStudioError, LabelStudioUnavailable, TokenMissing


def read_token(campaign: Campaign) -> str:
    cfg = campaign.labeling
    value = os.environ.get(cfg.token_env, "").strip()
    if value:
        return value
    if cfg.token_file:
        path = Path(cfg.token_file).expanduser()
        if not path.is_absolute():
            path = campaign.folder / path if not path.exists() else path
        try:
            value = path.read_text().strip()
        except OSError as err:
            raise TokenMissing(f"labeling.token_file {path}: cannot be read ({err.strerror})") from None
        if value:
            return value
        raise TokenMissing(f"labeling.token_file {path} is empty")
    from .server import local_token

    value = local_token(campaign) or ""
    if value:
        return value
    raise TokenMissing(
        f"no Label Studio API token: set the environment variable {cfg.token_env} or labeling.token_file "
        f"(or start a local server with `medloop labelstudio start`)"
    )


class LSClient:
    """Label Studio REST calls with clear errors: unreachable -> :class:`LabelStudioUnavailable`."""

    def __init__(self, url: str, token: str, *, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def __repr__(self) -> str:  # never shows the token
        return f"LSClient({self.url!r})"

    def sdk(self) -> Any:
        """The official ``label_studio_sdk.LabelStudio`` client on the same connection."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self._token)

    # ---- raw calls ------------------------------------------------------------------------
    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 204), **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        full = self.url + path
        try:
            r = self.session.request(method, full, **kwargs)
        except requests.ConnectionError as err:
            raise LabelStudioUnavailable(f"Label Studio at {self.url} is unreachable ({type(err).__name__})") from None
        except requests.Timeout:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url} did not answer in {kwargs['timeout']} s"
            ) from None
        if r.status_code in (502, 503, 504):
            raise LabelStudioUnavailable(f"Label Studio at {self.url} is unavailable (HTTP {r.status_code})")
        if r.status_code not in ok:
            body = r.text[:500].replace(self._token, "***")
            raise LabelStudioError(f"{method} {full}: HTTP {r.status_code}: {body}")
        if r.status_code == 204 or not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            return r.content

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def health(self) -> bool:
        try:
            return self.session.get(self.url + "/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    # ---- helpers ---------------------------------------------------------------------------
    def iter_tasks(self, project_id: int, *, include: str = "id,data", page_size: int = 1000,
                   fields: str | None = None) -> Iterator[dict]:
        """Every task of a project (paged), with only the ``include``d fields."""
        page = 1
        while True:
            params: dict[str, Any] = {"project": project_id, "page": page, "page_size": page_size,
                                      "resolve_uri": "false"}
            if include:
                params["include"] = include
            if fields:
                params["fields"] = fields
            try:
                out = self.get("/api/tasks", params=params)
            except LabelStudioError as err:
                if "HTTP 404" in str(err):  # past the last page
                    return
                raise
            tasks = out.get("tasks", []) if isinstance(out, dict) else out
            yield from tasks
            total = out.get("total") if isinstance(out, dict) else None
            if not tasks or len(tasks) < page_size or (total is not None and page * page_size >= total):
                return
            page += 1

    def users(self) -> dict[int, str]:
        """User id -> email."""
        out = self.get("/api/users")
        rows = out.get("results", out) if isinstance(out, dict) else out
        return {int(u["id"]): u.get("email") or u.get("username") or str(u["id"]) for u in rows}


def connect(campaign: Campaign, *, url: str | None = None, token: str | None = None) -> LSClient:
    """A client for the campaign's Label Studio (URL + token from the campaign unless given)."""
    return LSClient(url or campaign.labeling.url, token or read_token(campaign))
