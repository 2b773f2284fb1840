"""A shared-memory reference is a name a peer sends: only blocks this orchestrator made are opened,
never through a symlink, and a config cannot carry references at all."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from orchestrator import InvalidTaskError, ParallelOrchestrator
from tests.conftest import DEADLOCK_TIMEOUT
from workers.shm import block_prefix

pytestmark = pytest.mark.timeout(60)

SECRET = b"the host's secret, 0600\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


@pytest.fixture
def victim() -> Iterator[Path]:
    """A /dev/shm object of somebody else's."""
    path = Path("/dev/shm") / f"victim-{uuid.uuid4().hex}"
    path.write_bytes(SECRET)
    yield path
    path.unlink(missing_ok=True)


def forge(orch: ParallelOrchestrator, name: str, code: int = 1) -> str:
    spec = {"type": "forged_block", "config": {"name": name, "size": len(SECRET), "code": code}}
    result = orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)
    assert result.error is not None, f"the host read {name!r}: {result.data}"
    assert result.error.kind == "serialization"
    return result.error.message


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_a_reference_to_any_file_is_refused(
    make_orch: Callable[..., ParallelOrchestrator], secret: Path, how: str
) -> None:
    orch = make_orch(max_workers=1)
    name = str(secret) if how == "absolute" else "../.." + str(secret)
    assert "did not make" in forge(orch, name)
    assert secret.read_bytes() == SECRET


def test_a_reference_to_another_shm_object_is_refused_and_it_is_not_unlinked(
    make_orch: Callable[..., ParallelOrchestrator], victim: Path
) -> None:
    orch = make_orch(max_workers=1)
    assert "did not make" in forge(orch, victim.name)
    assert victim.exists()


def test_a_symlink_with_our_own_name_is_not_followed(
    make_orch: Callable[..., ParallelOrchestrator], secret: Path
) -> None:
    orch = make_orch(max_workers=1)
    planted = Path("/dev/shm") / f"{block_prefix(orch._block_namespace, 1)}99999"
    planted.symlink_to(secret)
    try:
        message = forge(orch, planted.name)
    finally:
        planted.unlink()
    assert "Too many levels of symbolic links" in message
    assert secret.read_bytes() == SECRET


@pytest.mark.parametrize("code", [1, 2, 3, 4])
def test_a_config_cannot_carry_references(make_orch: Callable[..., ParallelOrchestrator], code: int) -> None:
    orch = make_orch(max_workers=1)
    forged = msgpack.ExtType(code, msgpack.packb(["orch_anything", 10]))
    with pytest.raises(InvalidTaskError, match="ExtType, a subclass of tuple"):
        orch.submit_task({"type": "echo", "config": {"blob": forged}})
    assert orch.get_status().queued == 0


def test_subclasses_of_plain_types_are_refused(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    from collections import OrderedDict

    orch = make_orch(max_workers=1)
    with pytest.raises(InvalidTaskError, match="OrderedDict, a subclass of dict"):
        orch.submit_task({"type": "echo", "config": {"nested": OrderedDict(a=1)}})
