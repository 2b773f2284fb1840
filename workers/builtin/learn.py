"""Built-in type ``learn``: extract key terms from material into a persistent SQLite store.

Config: ``subject``; ``material`` (a list of strings: one naming an existing file or folder is
read, anything else is taken as text); ``knowledge_path`` (the SQLite file, created if missing).
Terms and two-word phrases are weighed by TF-IDF against what the store already holds; their
co-occurrences within sentences and the sentence that best defines each are merged in. Material
already learned (same content, as text or as a file) adds nothing: the store is idempotent.

Schema: ``meta(key, value)``; ``documents(hash PK, subject, learned_at)``;
``concepts(term PK, subject, score, documents, occurrences, definition, first_seen)``;
``cooccurrences(a, b, count, PK(a, b))`` with ``a < b``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
import time
from collections import Counter
from contextlib import closing
from itertools import combinations, pairwise
from typing import Any

from workers.builtin.options import option
from workers.builtin.research import tokenize
from workers.context import TaskContext

SCHEMA_VERSION = 1
TERMS_PER_DOCUMENT = 25
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n{2,}")
_DEFINES = re.compile(r"\b(is|are|means|refers to|describes|denotes)\b", re.I)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (hash TEXT PRIMARY KEY, subject TEXT NOT NULL, learned_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS concepts (
    term TEXT PRIMARY KEY, subject TEXT NOT NULL, score REAL NOT NULL, documents INTEGER NOT NULL,
    occurrences INTEGER NOT NULL, definition TEXT, first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cooccurrences (
    a TEXT NOT NULL, b TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (a, b));
"""


def run(ctx: TaskContext) -> dict[str, Any]:
    """Learn every piece of material not yet in the store, then report the subject's top terms."""
    config = ctx.config
    subject = option(config, "subject", str)
    material = option(config, "material", list)
    path = option(config, "knowledge_path", str)
    texts = _gather(material)
    with closing(_open_store(path)) as db:
        db.execute("BEGIN IMMEDIATE")  # runs on the same store serialize here
        before = db.execute("SELECT COUNT(*) FROM concepts").fetchone()[0]
        for index, text in enumerate(texts, start=1):
            _learn_document(db, subject, text)
            ctx.progress(index, len(texts), f"{index}/{len(texts)} pieces of material learned")
        db.execute("COMMIT")
        total = db.execute("SELECT COUNT(*) FROM concepts").fetchone()[0]
        top = [
            {"term": term, "score": round(score, 4), "definition": definition}
            for term, score, definition in db.execute(
                "SELECT term, score, definition FROM concepts WHERE subject = ? "
                "ORDER BY score DESC, term LIMIT 10",
                (subject,),
            )
        ]
    return {
        "knowledge": {"concepts": total, "new": total - before, "top": top},
        "knowledge_path": path,
    }


def _gather(material: list[Any]) -> list[str]:
    texts: list[str] = []
    for item in material:
        if not isinstance(item, str):
            raise ValueError(f"config key 'material': each item must be a str, not {item!r:.60}")
        if os.path.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                texts.extend(_read(os.path.join(root, f)) for f in sorted(files) if not f.startswith("."))
        elif os.path.isfile(item):
            texts.append(_read(item))
        else:
            texts.append(item)
    return [t for t in texts if t.strip()]


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"config key 'material': cannot read {path!r}: {exc}") from exc


def _open_store(path: str) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    except sqlite3.Error as exc:
        raise ValueError(
            f"config key 'knowledge_path': cannot use {path!r} as a knowledge store: {exc}"
        ) from exc
    return db


def _learn_document(db: sqlite3.Connection, subject: str, text: str) -> None:
    digest = hashlib.sha256(" ".join(text.split()).encode()).hexdigest()
    if db.execute("SELECT 1 FROM documents WHERE hash = ?", (digest,)).fetchone():
        return
    now = time.time()
    documents = db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
    sentences = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
    counts = Counter(term for sentence in sentences for term in _terms(sentence))
    weights = {}
    for term, occurrences in counts.items():
        row = db.execute("SELECT documents FROM concepts WHERE term = ?", (term,)).fetchone()
        idf = math.log((1 + documents + 1) / (1 + (row[0] if row else 0))) + 1
        weights[term] = (1 + math.log(occurrences)) * idf
    key_terms = sorted(weights, key=lambda t: (-weights[t], t))[:TERMS_PER_DOCUMENT]
    for term in key_terms:
        _merge_concept(db, subject, term, weights[term], counts[term], _definition(term, sentences), now)
    chosen = set(key_terms)
    for sentence in sentences:
        present = sorted(chosen & set(_terms(sentence)))
        for a, b in combinations(present, 2):
            db.execute(
                "INSERT INTO cooccurrences VALUES (?, ?, 1) "
                "ON CONFLICT(a, b) DO UPDATE SET count = count + 1",
                (a, b),
            )
    db.execute("INSERT INTO documents VALUES (?, ?, ?)", (digest, subject, now))


def _merge_concept(
    db: sqlite3.Connection,
    subject: str,
    term: str,
    weight: float,
    occurrences: int,
    definition: str | None,
    now: float,
) -> None:
    db.execute(
        """INSERT INTO concepts VALUES (?, ?, ?, 1, ?, ?, ?)
           ON CONFLICT(term) DO UPDATE SET
             score = score + excluded.score, documents = documents + 1,
             occurrences = occurrences + excluded.occurrences,
             definition = COALESCE(definition, excluded.definition)""",
        (term, subject, weight, occurrences, definition, now),
    )


def _terms(sentence: str) -> list[str]:
    words = [w for w in tokenize(sentence) if len(w) > 2 and not w.isdigit()]
    return words + [f"{a} {b}" for a, b in pairwise(words)]


def _definition(term: str, sentences: list[str]) -> str | None:
    """The first sentence that defines the term ("X is ..."), else the first that mentions it."""
    mentions = [s for s in sentences if term in " ".join(tokenize(s))]
    for sentence in mentions:
        lowered = sentence.lower()
        verb = _DEFINES.search(lowered)
        if verb and 0 <= lowered.find(term.split()[0]) < verb.start():
            return sentence[:300]
    return mentions[0][:300] if mentions else None
