"""research reads only inside its allowed_roots and fetches only from its allowed_hosts.

Each way out is tried on purpose: a symlink inside a root, ``..``, a glob, a ``file://`` URL, a
root that is itself a symlink, a URL to another host and a redirect to one; and the host-wide
settings that a config may narrow but not widen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from orchestrator import ConfigError, ParallelOrchestrator, TaskResult
from tests.conftest import DEADLOCK_TIMEOUT

pytestmark = pytest.mark.timeout(60)

SECRET = "zebra credentials"
PUBLIC = "zebra migration"


def research(orch: ParallelOrchestrator, **config: Any) -> TaskResult:
    spec = {"type": "research", "config": {"topic": "zebra", **config}}
    return orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)


def snippets(result: TaskResult) -> str:
    assert result.success, result.error
    return " ".join(hit["snippet"] for hit in result.data["results"])


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """``root/public.txt`` and ``secret/key.txt`` beside it, ``root`` holding a way out to each."""
    root, secret = tmp_path / "root", tmp_path / "secret"
    (root / "sub").mkdir(parents=True)
    secret.mkdir()
    (root / "public.txt").write_text(PUBLIC)
    (secret / "key.txt").write_text(SECRET)
    (root / "sub" / "link.txt").symlink_to(secret / "key.txt")
    (root / "outdir").symlink_to(secret, target_is_directory=True)
    return root, secret


def test_nothing_outside_the_roots_is_read_by_any_path(
    make_orch: Callable[..., ParallelOrchestrator], tree: tuple[Path, Path]
) -> None:
    root, secret = tree
    sources = [
        str(root),
        str(root / "sub" / "link.txt"),
        str(root / ".." / "secret" / "key.txt"),
        str(root / "outdir" / "key.txt"),
        str(root / "**" / "*.txt"),
        f"file://{secret / 'key.txt'}",
        str(secret),
    ]
    result = research(make_orch(max_workers=1), sources=sources, allowed_roots=[str(root)])
    assert snippets(result) == PUBLIC
    assert result.data["sources_read"] == 1
    assert all("outside allowed_roots" in error["error"] for error in result.data["errors"])
    # The folder's own walk meets sub/link.txt, which is refused when opened (a source named too).
    assert {error["source"] for error in result.data["errors"]} == set(sources) - {str(root)}


def test_the_same_sources_are_read_without_a_scope(
    make_orch: Callable[..., ParallelOrchestrator], tree: tuple[Path, Path]
) -> None:
    """The control case: without allowed_roots the symlink does lead to the secret."""
    root, _ = tree
    result = research(make_orch(max_workers=1), sources=[str(root / "sub" / "link.txt")])
    assert snippets(result) == SECRET


def test_a_root_through_a_symlink_is_refused_by_name(
    make_orch: Callable[..., ParallelOrchestrator], tree: tuple[Path, Path]
) -> None:
    root, secret = tree
    result = research(make_orch(max_workers=1), sources=[str(secret)], allowed_roots=[str(root / "outdir")])
    assert result.error is not None
    assert "allowed_roots" in result.error.message
    assert "symlink" in result.error.message
    assert str(secret) in result.error.message


class _Site(BaseHTTPRequestHandler):
    """``/public.txt``, ``/secret.txt``, and ``/go`` that redirects to ``localhost``'s secret."""

    def do_GET(self) -> None:
        if self.path == "/go":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/secret.txt")
            self.end_headers()
            return
        body = {"/public.txt": PUBLIC, "/secret.txt": SECRET}.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write((body or "").encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_only_allowed_hosts_are_fetched_even_through_a_redirect(
    make_orch: Callable[..., ParallelOrchestrator], site: str
) -> None:
    port = site.rpartition(":")[2]
    sources = [f"{site}/public.txt", f"{site}/go", f"http://localhost:{port}/secret.txt"]
    result = research(make_orch(max_workers=1), sources=sources, allowed_hosts=["127.0.0.1"])
    assert snippets(result) == PUBLIC
    errors = {error["source"]: error["error"] for error in result.data["errors"]}
    assert set(errors) == {f"{site}/go", f"http://localhost:{port}/secret.txt"}
    assert all("allowed_hosts" in message and "localhost" in message for message in errors.values())


def test_without_allowed_hosts_the_redirect_is_followed(
    make_orch: Callable[..., ParallelOrchestrator], site: str
) -> None:
    """The control case for the redirect above."""
    assert snippets(research(make_orch(max_workers=1), sources=[f"{site}/go"])) == SECRET


def test_the_hosts_settings_scope_every_research_task(
    make_orch: Callable[..., ParallelOrchestrator], tree: tuple[Path, Path], site: str
) -> None:
    root, secret = tree
    orch = make_orch(max_workers=1, research_roots=[str(root)], research_hosts=["127.0.0.1"])
    unscoped = research(orch, sources=[str(secret), f"{site}/go", str(root)])
    assert snippets(unscoped) == PUBLIC
    refused = {error["source"]: error["error"] for error in unscoped.data["errors"]}
    assert set(refused) == {str(secret), f"{site}/go", str(root / "sub" / "link.txt")}

    narrowed = research(orch, sources=[str(root)], allowed_roots=[str(root / "sub")])
    assert narrowed.success
    assert narrowed.data["sources_read"] == 0

    for key, value, setting in [
        ("allowed_roots", str(secret), "research_roots"),
        ("allowed_roots", str(root / ".." / "secret"), "research_roots"),
        ("allowed_hosts", "localhost", "research_hosts"),
    ]:
        widened = research(orch, sources=[str(secret)], **{key: [value]})
        assert widened.error is not None, key
        assert widened.error.exception_type == "PermissionError"
        assert f"config key {key!r}" in widened.error.message
        assert f"OrchestratorConfig.{setting}" in widened.error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("research_roots", ["docs"]), ("research_hosts", ["https://example.org"]), ("research_hosts", [""])],
)
def test_bad_research_settings_are_refused(field: str, value: list[str]) -> None:
    with pytest.raises(ConfigError, match=field):
        ParallelOrchestrator(**{field: value})
