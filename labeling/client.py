"""A thin, fast HTTP client for Label Studio's REST API (legacy ``Token`` authentication).

The connection comes from the campaign: ``labeling.url`` and a token read from the environment
variable ``labeling.token_env``, else from ``labeling.token_file``, else (for a server started by
``medloop labelstudio start``) from ``<campaign>/labelstudio/api-token``. The token is never
logged nor put in an error message. A team's own Label Studio is used by setting the URL and
token; the official SDK client is available through :meth:`LSClient.sdk`.

Calls go through a ``requests`` session whose adapter retries with urllib3's ``Retry``: connection
errors (nothing was sent yet, any method) and answers 502 / 503 / 504 for idempotent methods (GET,
HEAD, PUT, DELETE, OPTIONS; never POST or PATCH, which could apply twice), with exponential backoff
(``backoff`` x 1, 2, 4 s after the first retry). When the retries are spent the call raises
:class:`LabelStudioUnavailable`. A timed-out read is not retried (a slow export would run again).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from medloop.config import Campaign

from .errors import LabelStudioError, LabelStudioUnavailable, TokenMissing


def read_token(campaign: Campaign) -> str:
    cfg = campaign.labeling
    value = os.environ.get(cfg.token_env, "").strip()
    if value:
        return value
    if cfg.token_file:
        path = campaign.resolve_path(cfg.token_file)  # a relative one: from the campaign file's folder,
        if not path.exists() and not Path(cfg.token_file).expanduser().is_absolute():
            path = campaign.folder / cfg.token_file  # else from the campaign folder
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


RETRY_STATUS = (502, 503, 504)
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


def retry_policy(retries: int = 3, backoff: float = 0.5) -> Retry:
    """urllib3 ``Retry``: ``retries`` times on connection errors (any method: nothing reached the
    server) and on 502/503/504 answers to idempotent methods; no retry of a timed-out read."""
    return Retry(
        total=retries, connect=retries, read=0, status=retries, other=0,
        status_forcelist=RETRY_STATUS, allowed_methods=IDEMPOTENT, backoff_factor=backoff,
        raise_on_status=False,  # the last answer comes back and is reported below
        respect_retry_after_header=False,  # bounded waits: the backoff only
    )


class LSClient:
    """Label Studio REST calls with clear errors: unreachable -> :class:`LabelStudioUnavailable`."""

    def __init__(self, url: str, token: str, *, timeout: float = 120.0, retries: int = 3,
                 backoff: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.retries = retries
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"
        adapter = HTTPAdapter(max_retries=retry_policy(retries, backoff))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def __repr__(self) -> str:  # never shows the token
        return f"LSClient({self.url!r})"

    def sdk(self) -> Any:
        """The official ``label_studio_sdk.LabelStudio`` client on the same connection."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self._token)

    # ---- raw calls ------------------------------------------------------------------------
    def send(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 204), **kwargs: Any
             ) -> requests.Response:
        """The answer to one call (after the retries), when its status is in ``ok``; otherwise
        :class:`LabelStudioUnavailable` (unreachable, 502/503/504) or :class:`LabelStudioError`,
        both with the status code in ``.status``."""
        kwargs.setdefault("timeout", self.timeout)
        full = self.url + path
        tries = f" after {self.retries} retries" if self.retries else ""
        try:
            r = self.session.request(method, full, **kwargs)
        except requests.Timeout:  # before ConnectionError: ConnectTimeout is both
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url} did not answer in {kwargs['timeout']} s"
            ) from None
        except requests.ConnectionError as err:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url} is unreachable{tries} ({type(err).__name__})") from None
        if r.status_code in RETRY_STATUS and r.status_code not in ok:
            again = tries if method.upper() in IDEMPOTENT else f" ({method} is not retried)"
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url} is unavailable (HTTP {r.status_code}{again})", status=r.status_code)
        if r.status_code not in ok:
            body = r.text[:500].replace(self._token, "***")
            raise LabelStudioError(f"{method} {full}: HTTP {r.status_code}: {body}", status=r.status_code)
        return r

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 204), **kwargs: Any) -> Any:
        """The decoded JSON answer of one call (None for an empty one); errors as :meth:`send`."""
        r = self.send(method, path, ok=ok, **kwargs)
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
        """One quick look at ``/health`` (no retries)."""
        try:
            return requests.get(self.url + "/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    # ---- helpers ---------------------------------------------------------------------------
    def iter_tasks(self, project_id: int, *, include: str = "id,data", page_size: int = 1000,
                   fields: str | None = None) -> Iterator[dict]:
        """Every task of a project (paged), with only the ``include``d fields.

        The last page is the one that reaches the answer's ``total`` (or, without one, a short or
        empty page). A 404 on the first page means the project does not exist (an error); on a later
        page (tasks deleted while paging) it ends the listing."""
        page, seen = 1, 0
        while True:
            params: dict[str, Any] = {"project": project_id, "page": page, "page_size": page_size,
                                      "resolve_uri": "false"}
            if include:
                params["include"] = include
            if fields:
                params["fields"] = fields
            r = self.send("GET", "/api/tasks", ok=(200, 404), params=params)
            if r.status_code == 404:
                if page == 1:
                    raise LabelStudioError(
                        f"GET {self.url}/api/tasks: project {project_id} not found (HTTP 404)", status=404)
                return
            out = r.json()
            tasks = out.get("tasks", []) if isinstance(out, dict) else out
            yield from tasks
            seen += len(tasks)
            total = out.get("total") if isinstance(out, dict) else None
            if not tasks or (seen >= total if isinstance(total, int) else len(tasks) < page_size):
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
