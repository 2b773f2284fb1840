"""An agent team in rounds: members exchange findings on a topic; a judge reads the last round.

    python examples/team.py [--members 3] [--rounds 3] [--workers 2]

Each member subscribes to the team topic, says "ready", and waits for "go". In each round it
publishes its finding, reads the others' findings of that round (keeping early messages of later
rounds), and revises its own. A team larger than the pool works: a task blocked in ``receive``
lends its worker slot to the others, for up to ``max_waiting_tasks`` tasks at a time, so a team
needs ``members + 1 <= max_workers + max_waiting_tasks``.
"""

from __future__ import annotations

import argparse
import threading

from orchestrator import Message, ParallelOrchestrator
from workers import TaskContext


def member(ctx: TaskContext) -> float:
    """A member: its seed, revised each round by the sum of the others' findings."""
    team, size, rounds = ctx.config["team"], ctx.config["size"], ctx.config["rounds"]
    inbox = ctx.subscribe(team)
    ctx.publish(team, {"kind": "ready"})
    while inbox.receive(timeout=60).data["kind"] != "go":
        pass
    value = ctx.config["seed"]
    early: dict[int, list[float]] = {}
    for round_no in range(rounds):
        ctx.publish(team, {"kind": "finding", "round": round_no, "value": value})
        others = early.pop(round_no, [])
        while len(others) < size - 1:
            message = inbox.receive(timeout=60)
            if message.data["kind"] != "finding" or message.sender == ctx.task_id:
                continue
            if message.data["round"] == round_no:
                others.append(message.data["value"])
            else:
                early.setdefault(message.data["round"], []).append(message.data["value"])  # kept for later
        value += sum(others)
        ctx.progress(round_no + 1, rounds, f"round {round_no}: {value}")
    return value


def judge(ctx: TaskContext) -> list[float]:
    """Subscribed before round 0 like the members; returns the last round's findings."""
    team, size, rounds = ctx.config["team"], ctx.config["size"], ctx.config["rounds"]
    inbox = ctx.subscribe(team)
    ctx.publish(team, {"kind": "ready"})
    last: list[float] = []
    while len(last) < size:
        data = inbox.receive(timeout=60).data
        if data["kind"] == "finding" and data["round"] == rounds - 1:
            last.append(data["value"])
    return sorted(last)


def run_team(orch: ParallelOrchestrator, size: int, rounds: int) -> tuple[list[float], list[float]]:
    """Start the team, say "go" once all are listening, and return the findings and the verdict."""
    team = "team"
    ready: set[str | None] = set()
    everyone = threading.Event()

    def on_team(message: Message) -> None:
        if message.data["kind"] == "ready":
            ready.add(message.sender)
            if len(ready) == size + 1:
                everyone.set()

    orch.subscribe(team, on_team)
    config = {"team": team, "size": size, "rounds": rounds}
    members = [orch.submit_task({"type": "member", "config": {**config, "seed": i + 1}}) for i in range(size)]
    verdict = orch.submit_task({"type": "judge", "config": config})
    if not everyone.wait(60):
        raise TimeoutError("the team did not get ready")
    orch.publish(team, {"kind": "go"})
    return [orch.wait(task_id).data for task_id in members], orch.wait(verdict).data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    handlers = {"member": "examples.team:member", "judge": "examples.team:judge"}
    with ParallelOrchestrator(
        max_workers=args.workers, max_waiting_tasks=args.members + 1, handlers=handlers, control_socket=False
    ) as orch:
        findings, verdict = run_team(orch, args.members, args.rounds)
    print(f"{args.members} members, {args.rounds} rounds, {args.workers} workers")
    print(f"final findings: {findings}")
    print(f"the judge read round {args.rounds - 1}: {verdict}")


if __name__ == "__main__":
    main()
