"""Built-in type ``research``: read sources and rank their passages against a topic with BM25.

Config: ``topic``; ``sources`` (files, folders walked recursively without dot-files, globs,
``file://`` and ``http(s)://`` URLs); ``max_results`` (10); ``max_bytes_per_source`` (1 MB; longer
sources are truncated); ``allowed_roots`` and ``allowed_hosts`` (optional: the folders it may read
and the URL hosts it may fetch from; absent, anything the worker's user can reach). Text, Markdown,
HTML (tags stripped) and JSON are read; binary files, sources that fail to read and sources outside
the allowed ones are listed in ``errors``, never fatal.
"""

from __future__ import annotations

import glob
import html
import json
import math
import os
import re
import stat
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlparse

from workers.builtin.options import count, option, strings
from workers.context import TaskContext

FETCH_TIMEOUT = 10.0
_WINDOW_WORDS = 120  # a long paragraph is cut into windows of this many words
_K1, _B = 1.5, 0.75
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each either else ever every
few for from further had has have having he her here hers him his how however i if in into is
it its itself just may me might more most must my no nor not now of off on once one only or
other our ours out over own same shall she should so some such than that the their theirs them
then there these they this those through thus to too under until up upon us very was we were
what when where whether which while who whom whose why will with within without would yet you
your""".split()
)
_TAG = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.S | re.I)


@dataclass(slots=True)
class _Passage:
    source: str
    line: int
    text: str
    terms: Counter[str]


@dataclass(frozen=True, slots=True)
class Scope:
    """Where one run may read: folders (real paths) and URL hosts; None is anywhere.

    A file is checked by the real path of the descriptor it was opened on, so no symlink, ``..``
    or rename between the check and the read leads outside; a URL is checked again at every
    redirect.
    """

    roots: tuple[str, ...] | None = None
    hosts: frozenset[str] | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Scope:
        """The scope a config's ``allowed_roots`` and ``allowed_hosts`` describe.

        Raises:
            ValueError: a root that is not an absolute path to a real folder (no symlink on the
                way), or a host that is not ``name`` or ``name:port``.
        """
        roots = strings(config, "allowed_roots")
        hosts = strings(config, "allowed_hosts")
        return cls(
            None if roots is None else tuple(_real_root(root) for root in roots),
            None if hosts is None else frozenset(_host_entry(host) for host in hosts),
        )

    def admits_path(self, real_path: str) -> bool:
        """Whether a resolved path lies in (or is) one of the roots."""
        if self.roots is None:
            return True
        return any(real_path == root or real_path.startswith(root.rstrip("/") + "/") for root in self.roots)

    def check_path(self, real_path: str) -> None:
        """Raise `PermissionError` when a resolved path is outside the roots."""
        if not self.admits_path(real_path):
            raise PermissionError(f"{real_path} is outside allowed_roots {list(self.roots or ())}")

    def check_url(self, url: str) -> None:
        """Raise `PermissionError` when a URL is not http(s) to one of the hosts."""
        if self.hosts is None:
            return
        parts = urlparse(url)
        host = (parts.hostname or "").rstrip(".")
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme in ("http", "https") and (
            host in self.hosts or (port is not None and f"{host}:{port}" in self.hosts)
        ):
            return
        raise PermissionError(f"{url} is not on allowed_hosts {sorted(self.hosts)}")


def _real_root(root: str) -> str:
    if not os.path.isabs(root):
        raise ValueError(f"config key 'allowed_roots': {root!r} is not an absolute path")
    real = os.path.realpath(root)
    if real != os.path.normpath(root):
        raise ValueError(
            f"config key 'allowed_roots': {root!r} goes through a symlink to {real!r}; name the real path"
        )
    return real


def _host_entry(host: str) -> str:
    entry = host.lower().rstrip(".")
    if not _HOST.fullmatch(entry):
        raise ValueError(f"config key 'allowed_hosts': {host!r} is not a host name or host:port")
    return entry


_HOST: Final = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+|[0-9a-f:]+)(:[0-9]{1,5})?")


def run(ctx: TaskContext) -> dict[str, Any]:
    """Read every source, split into passages, and return the best-matching passages."""
    config = ctx.config
    topic = option(config, "topic", str)
    sources = option(config, "sources", list)
    max_results = count(config, "max_results", 10)
    max_bytes = count(config, "max_bytes_per_source", 1_000_000)
    scope = Scope.from_config(config)
    query = tokenize(topic)
    if not query:
        raise ValueError(f"config key 'topic': {topic!r} has no searchable words")
    locations, errors = _expand(sources, scope)
    passages: list[_Passage] = []
    read = 0
    for index, location in enumerate(locations, start=1):
        try:
            passages.extend(split_passages(location, _read(location, max_bytes or 1_000_000, scope)))
            read += 1
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            errors.append({"source": location, "error": str(exc)})
        ctx.progress(index, len(locations), f"{index}/{len(locations)} sources researched")
    ranked = rank(passages, query)[:max_results]
    results = [
        {"source": p.source, "score": round(score, 4), "snippet": p.text[:300], "line": p.line}
        for score, p in ranked
    ]
    return {"topic": topic, "results": results, "sources_read": read, "errors": errors}


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without stop words."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


def rank(passages: list[_Passage], query: list[str]) -> list[tuple[float, _Passage]]:
    """BM25 scores (non-negative IDF) of passages sharing a term with the query, best first."""
    if not passages:
        return []
    n = len(passages)
    average = sum(sum(p.terms.values()) for p in passages) / n or 1.0
    frequency = Counter(term for p in passages for term in set(p.terms))
    scored = []
    for passage in passages:
        length = sum(passage.terms.values())
        score = 0.0
        for term in set(query):
            tf = passage.terms.get(term, 0)
            if tf:
                idf = math.log(1 + (n - frequency[term] + 0.5) / (frequency[term] + 0.5))
                score += idf * tf * (_K1 + 1) / (tf + _K1 * (1 - _B + _B * length / average))
        if score > 0:
            scored.append((score, passage))
    scored.sort(key=lambda pair: -pair[0])
    return scored


def split_passages(source: str, text: str) -> list[_Passage]:
    """Paragraphs (blank-line separated), long ones cut into windows, with their first line."""
    passages = []
    line = 1
    for block in re.split(r"(\n\s*\n)", text):
        if block.strip() and not re.fullmatch(r"\n\s*\n", block):
            start = line + (len(block) - len(block.lstrip("\n")))
            words = block.split()
            for offset in range(0, len(words), _WINDOW_WORDS):
                chunk = " ".join(words[offset : offset + _WINDOW_WORDS])
                passages.append(_Passage(source, start, chunk, Counter(tokenize(chunk))))
        line += block.count("\n")
    return passages


def _expand(sources: list[Any], scope: Scope) -> tuple[list[str], list[dict[str, str]]]:
    locations: list[str] = []
    errors: list[dict[str, str]] = []
    for source in sources:
        if not isinstance(source, str):
            raise ValueError(f"config key 'sources': each source must be a str, not {source!r}")
        if source.startswith(("http://", "https://")):
            found, problem = [source], None
        else:
            found, problem = _local_files(source, scope)
        if problem is not None:
            errors.append({"source": source, "error": problem})
        locations.extend(f for f in found if f not in locations)
    return locations, errors


def _local_files(source: str, scope: Scope) -> tuple[list[str], str | None]:
    """The files a path, folder, glob or ``file://`` source names in scope, and what was wrong."""
    path = unquote(urlparse(source).path) if source.startswith("file://") else source
    pattern = any(ch in path for ch in "*?[")
    matches = glob.glob(path, recursive=True) if pattern else [path]
    inside = [match for match in matches if scope.admits_path(os.path.realpath(match))]
    found = [p for match in inside for p in _files_under(match)]
    if pattern:
        found.sort()
    if len(inside) < len(matches):
        return found, f"outside allowed_roots {list(scope.roots or ())}"
    return found, None if found else "no such file or folder"


def _files_under(path: str) -> list[str]:
    # The walk does not follow symlinked folders; a symlinked file is checked when it is opened.
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return []
    found: list[str] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return found


def _read(location: str, max_bytes: int, scope: Scope) -> str:
    if location.startswith(("http://", "https://")):
        raw, kind = _fetch(location, max_bytes, scope)
    else:
        raw = _read_file(location, max_bytes, scope)
        kind = {".html": "text/html", ".htm": "text/html", ".json": "application/json"}.get(
            Path(location).suffix.lower(), "text/plain"
        )
    if b"\0" in raw[:8192]:
        raise ValueError("binary file skipped")
    text = raw.decode("utf-8", errors="replace" if len(raw) == max_bytes else "strict")
    if kind == "text/html":
        return html.unescape(_TAG.sub(" ", text))
    if kind == "application/json":
        try:
            return "\n\n".join(_json_strings(json.loads(text)))
        except json.JSONDecodeError:
            pass
    return str(text)


def _read_file(location: str, max_bytes: int, scope: Scope) -> bytes:
    # The walk saw a regular file, but it may have been swapped since: O_NONBLOCK so that a FIFO
    # put in its place cannot hang open(), and the descriptor's own type and path are what count.
    fd = os.open(location, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        scope.check_path(os.readlink(f"/proc/self/fd/{fd}"))
        return handle.read(max_bytes)


class _ScopedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self._scope.check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, max_bytes: int, scope: Scope) -> tuple[bytes, str]:
    scope.check_url(url)
    opener = urllib.request.build_opener(_ScopedRedirects(scope))
    request = urllib.request.Request(url, headers={"User-Agent": "parallel-orchestrator"})
    with opener.open(request, timeout=FETCH_TIMEOUT) as response:
        return response.read(max_bytes), response.headers.get_content_type()


def _json_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [
            s
            for key, item in value.items()
            for s in _json_strings(f"{key}: {item}" if isinstance(item, int | float) else item)
        ]
    if isinstance(value, list):
        return [s for item in value for s in _json_strings(item)]
    return []
