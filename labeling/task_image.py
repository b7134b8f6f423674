"""The image of a Label Studio task, for the ML backend (``labeling/ml_backend.py``).

A task's image URL is one of:

* ``/data/local-files/?d=<path>``: a file below Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``
  (``labeling.document_root``, else the campaign folder; what medloop's pushed tasks use). When the path
  resolves (symlinks and ``..`` resolved) to a file inside that root it is read directly; otherwise it is
  fetched from Label Studio.
* ``/data/upload/...`` (an image uploaded in Label Studio) and any other ``/data/...`` path: fetched from
  Label Studio (``labeling.url``) with the API token (``labeling.token_env`` / ``token_file``, see
  :func:`medloop.labeling.client.read_token`); the token goes to that address only, and is never logged.
* ``http(s)://`` on Label Studio's own address: as the path above. Any other host is refused: the backend
  sends no request anywhere else.
* a plain path (or ``file://``): read when it lies inside the document root, refused otherwise.

Decoding follows ``medloop predict`` (:func:`medloop.data.inputs.read_input`: ingest's rules, DICOM through
pydicom, deep images rescaled to 8 bits, converted to the model's channels).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import requests

from medloop.data.errors import FileError
from medloop.data.inputs import INPUT_SUFFIXES, InputFile, read_input
from medloop.data.records import inside


class TaskImageError(ValueError):
    """A task's image cannot be located or read (the message names the URL and the reason)."""


@dataclass(frozen=True)
class Location:
    """Where an image URL points: a local file (``path``) or a URL on Label Studio (``url``)."""

    path: Path | None = None
    url: str | None = None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def locate(url: str, root: Path, ls_url: str) -> Location:
    """Where the image of ``url`` is read from (see the module docstring); pure but for the file checks."""
    text = str(url).strip()
    if not text:
        raise TaskImageError("the task has an empty image URL")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if _origin(text) != _origin(ls_url):
            raise TaskImageError(f"image {text}: not on Label Studio's address {ls_url}; the backend reads images "
                                 f"from Label Studio or below {root} only")
        path_part = parts.path + (f"?{parts.query}" if parts.query else "")
        return locate(path_part, root, ls_url) if path_part.startswith("/data/") else Location(url=text)
    if scheme == "file":
        return _inside_root(Path(unquote(parts.path)), root, text)
    if scheme:
        raise TaskImageError(f"image {text}: {scheme}:// URLs are not read by the backend; serve the image through "
                             "Label Studio (a local-files or upload URL)")
    base = ls_url.rstrip("/")
    if parts.path.rstrip("/") == "/data/local-files":
        d = parse_qs(parts.query).get("d", [""])[0]
        if not d:
            raise TaskImageError(f"image {text}: local-files URL without a ?d= path")
        candidate = root / PurePosixPath(d.lstrip("/")).as_posix()
        if inside(root, candidate) and candidate.is_file():
            return Location(path=candidate.resolve())
        return Location(url=base + text)
    if parts.path.startswith("/data/"):
        return Location(url=base + text)
    return _inside_root(Path(unquote(text)), root, text)


def _inside_root(path: Path, root: Path, text: str) -> Location:
    full = path if path.is_absolute() else root / path
    if not inside(root, full):
        raise TaskImageError(f"image {text}: outside the allowed folder {root} (labeling.document_root)")
    if not full.is_file():
        raise TaskImageError(f"image {text}: no such file")
    return Location(path=full.resolve())


def _suffix(url: str) -> str:
    parts = urlsplit(url)
    name = parse_qs(parts.query).get("d", [parts.path])[0]
    suffix = PurePosixPath(unquote(name)).suffix.lower()
    return suffix if suffix in INPUT_SUFFIXES else ".png"


class TaskImageReader:
    """Reads task images as uint8 arrays with ``channels`` (1 grey, 3 RGB), at their own size."""

    def __init__(self, *, root: str | Path, ls_url: str, token: Callable[[], str], channels: int = 1,
                 window: tuple[float, float] | None = None, timeout: float = 60.0) -> None:
        self.root = Path(root).resolve()
        self.ls_url = ls_url.rstrip("/")
        self._token_source = token
        self._token: str | None = None
        self.channels = channels
        self.window = window
        self.timeout = timeout
        self._local = threading.local()

    def __repr__(self) -> str:  # never shows the token
        return f"TaskImageReader(root={str(self.root)!r}, ls_url={self.ls_url!r})"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            if self._token is None:  # read once, on the first image fetched from Label Studio
                try:
                    self._token = self._token_source()
                except Exception as err:  # noqa: BLE001 - TokenMissing and unreadable token files alike
                    raise TaskImageError(f"no API token to fetch images from Label Studio at {self.ls_url}: "
                                         f"{err}") from None
            session = requests.Session()
            session.headers["Authorization"] = f"Token {self._token}"
            self._local.session = session
        return session

    def fetch(self, url: str) -> bytes:
        try:
            session = self._session()
        except TaskImageError as err:
            raise TaskImageError(f"image {url}: {err}") from None
        try:
            r = session.get(url, timeout=self.timeout)
        except requests.RequestException as err:
            raise TaskImageError(f"image {url}: Label Studio at {self.ls_url} cannot be reached "
                                 f"({type(err).__name__})") from None
        if r.status_code in (401, 403):
            raise TaskImageError(f"image {url}: Label Studio refused it (HTTP {r.status_code}); check the API token "
                                 "(labeling.token_env / labeling.token_file) and the project's storage")
        if r.status_code != 200:
            raise TaskImageError(f"image {url}: Label Studio answered HTTP {r.status_code}")
        return r.content

    def read(self, url: str) -> np.ndarray:
        """The image of ``url``; :class:`TaskImageError` naming the URL when it cannot be read."""
        where = locate(url, self.root, self.ls_url)
        try:
            if where.path is not None:
                return read_input(InputFile(where.path, where.path.stem), self.channels, self.window).image
            assert where.url is not None
            data = self.fetch(where.url)
            with tempfile.TemporaryDirectory(prefix="medloop-task-") as tmp:
                path = Path(tmp) / f"image{_suffix(where.url)}"
                path.write_bytes(data)
                return read_input(InputFile(path, "image"), self.channels, self.window).image
        except FileError as err:
            raise TaskImageError(f"image {url}: {err.problem}") from None
