"""Built-in type ``research``: read sources and rank their passages against a topic with BM25.

Config: ``topic``; ``sources`` (files, folders walked recursively without dot-files, globs,
``file://`` and ``http(s)://`` URLs); ``max_results`` (10); ``max_bytes_per_source`` (1 MB; longer
sources are truncated). Text, Markdown, HTML (tags stripped) and JSON are read; binary files and
sources that fail to read are listed in ``errors``, never fatal.
"""

from __future__ import annotations

import glob
import html
import json
import math
import os
import re
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from workers.context import TaskContext
from workers.options import count, option

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


def run(ctx: TaskContext) -> dict[str, Any]:
    """Read every source, split into passages, and return the best-matching passages."""
    config = ctx.config
    topic = option(config, "topic", str)
    sources = option(config, "sources", list)
    max_results = count(config, "max_results", 10)
    max_bytes = count(config, "max_bytes_per_source", 1_000_000)
    query = tokenize(topic)
    if not query:
        raise ValueError(f"config key 'topic': {topic!r} has no searchable words")
    locations, errors = _expand(sources)
    passages: list[_Passage] = []
    read = 0
    for index, location in enumerate(locations, start=1):
        try:
            passages.extend(split_passages(location, _read(location, max_bytes or 1_000_000)))
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


def _expand(sources: list[Any]) -> tuple[list[str], list[dict[str, str]]]:
    locations: list[str] = []
    errors: list[dict[str, str]] = []
    for source in sources:
        if not isinstance(source, str):
            raise ValueError(f"config key 'sources': each source must be a str, not {source!r}")
        if source.startswith(("http://", "https://")):
            found = [source]
        elif source.startswith("file://"):
            found = _files_under(unquote(urlparse(source).path))
        elif any(ch in source for ch in "*?["):
            found = sorted(p for match in glob.glob(source, recursive=True) for p in _files_under(match))
        else:
            found = _files_under(source)
        if not found:
            errors.append({"source": source, "error": "no such file or folder"})
        locations.extend(f for f in found if f not in locations)
    return locations, errors


def _files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return []
    found: list[str] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return found


def _read(location: str, max_bytes: int) -> str:
    if location.startswith(("http://", "https://")):
        request = urllib.request.Request(location, headers={"User-Agent": "parallel-orchestrator"})
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
            raw = response.read(max_bytes)
            kind = response.headers.get_content_type()
    else:
        with open(location, "rb") as handle:
            raw = handle.read(max_bytes)
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
