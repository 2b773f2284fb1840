"""Handlers of tasks that talk: topics, sub-tasks and teams (used by tests/integration/test_talk.py)."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import workers
from workers import TaskContext

RECEIVE_TIMEOUT = 30.0


def listener(ctx: TaskContext) -> Any:
    """Subscribe to config['topic'], say so on config['ready'], then return config['count'] messages."""
    subscription = ctx.subscribe(ctx.config["topic"])
    ctx.publish(ctx.config["ready"], ctx.task_id)
    got = []
    for _ in range(ctx.config["count"]):
        message = subscription.receive(timeout=RECEIVE_TIMEOUT)
        data = message.data
        if isinstance(data, dict) and isinstance(data.get("blob"), bytes):
            data = {**data, "blob": hashlib.sha256(data["blob"]).hexdigest(), "size": len(data["blob"])}
        got.append({"sender": message.sender, "data": data, "dropped": message.dropped})
    if ctx.config.get("crash"):
        os._exit(3)
    return got


def talker(ctx: TaskContext) -> Any:
    """Publish config['count'] messages {'n': i} (with config['blob'] if given) on config['topic']."""
    for n in range(ctx.config["count"]):
        ctx.publish(ctx.config["topic"], {"n": n, "blob": ctx.config.get("blob")})
    return ctx.config["count"]


def backlog(ctx: TaskContext) -> Any:
    """Subscribe to 'data' and 'go'; once 'go' comes, drain 'data' without waiting (overflow test)."""
    data = ctx.subscribe("data")
    go = ctx.subscribe("go")
    ctx.publish("ready", ctx.task_id)
    go.receive(timeout=RECEIVE_TIMEOUT)
    got = []
    while True:
        try:
            message = data.receive(timeout=0)
        except TimeoutError:
            return got
        got.append([message.data, message.dropped])


def misuse(ctx: TaskContext) -> Any:
    """Try what must fail: an unknown type, an invalid spec, an unserialisable publish, a bad id."""
    outcomes = {}
    for name, attempt in (
        ("unknown_type", lambda: ctx.submit({"type": "no-such-type"})),
        ("invalid_spec", lambda: ctx.submit({"type": "echo", "priority": 99})),
        ("unserialisable", lambda: ctx.publish("t", {"a set": {1, 2}})),
        ("non_str_key", lambda: ctx.publish("t", {1.5: "x"})),
        ("unknown_id", lambda: ctx.wait(["nobody-1"])),
    ):
        try:
            attempt()
            outcomes[name] = "no error"
        except (ValueError, TypeError, KeyError) as exc:
            outcomes[name] = f"{type(exc).__name__}: {exc}"
    outcomes["is_value_error"] = issubclass(workers.UnknownTaskTypeError, ValueError)
    outcomes["group"] = ctx.group
    return outcomes


def coordinator(ctx: TaskContext) -> Any:
    """Submit config['children'] echo children and gather them with ctx.wait or ctx.as_completed."""
    ids = [ctx.submit({"type": "echo", "config": {"i": i}}) for i in range(ctx.config["children"])]
    if ctx.config["mode"] == "wait":
        results = ctx.wait(ids, timeout=RECEIVE_TIMEOUT)
        assert [r.task_id for r in results] == ids
    else:
        results = list(ctx.as_completed(ids, timeout=RECEIVE_TIMEOUT))
    assert all(r.success and r.parent == ctx.task_id and r.status == "completed" for r in results)
    return sorted(r.data["config"]["i"] for r in results)


async def async_coordinator(ctx: TaskContext) -> Any:
    """The async form: children gathered with wait_async and as_completed_async."""
    ids = [ctx.submit({"type": "echo", "config": {"i": i}}) for i in range(4)]
    waited = await ctx.wait_async(ids[:2], timeout=RECEIVE_TIMEOUT)
    rest = [r async for r in ctx.as_completed_async(ids[2:], timeout=RECEIVE_TIMEOUT)]
    try:
        ctx.wait(ids)
    except RuntimeError as exc:
        blocking = str(exc)
    return {"values": sorted(r.data["config"]["i"] for r in [*waited, *rest]), "blocking": blocking}


def parent(ctx: TaskContext) -> Any:
    """Submit an attached sleeper and a detached child, then end as config['end'] says."""
    ctx.submit({"type": "sleep", "config": {"seconds": 120}})
    ctx.submit(ctx.config["detached"], detached=True)
    end = ctx.config["end"]
    if end == "fail":
        raise RuntimeError("the parent failed")
    if end == "crash":
        os._exit(3)
    if end == "succeed":
        return "done"
    time.sleep(600)  # cancelled or timed out from outside
    return None


def member(ctx: TaskContext) -> Any:
    """A team member: ready, then for each round publish a finding and revise it by the others'."""
    team, size, rounds = ctx.config["team"], ctx.config["size"], ctx.config["rounds"]
    subscription = _join_team(ctx, team)
    value = ctx.config["seed"]
    early: dict[int, list[float]] = {}
    for round_no in range(rounds):
        ctx.publish(team, {"kind": "finding", "round": round_no, "from": ctx.task_id, "value": value})
        others = early.pop(round_no, [])
        while len(others) < size - 1:
            data = subscription.receive(timeout=RECEIVE_TIMEOUT).data
            if data["kind"] != "finding" or data["from"] == ctx.task_id:
                continue
            if data["round"] == round_no:
                others.append(data["value"])
            else:
                early.setdefault(data["round"], []).append(data["value"])  # a later round's, kept
        value = value + sum(others)
    return value


def judge(ctx: TaskContext) -> Any:
    """Subscribed before round 0 like the members; returns the findings of the last round."""
    team, size, rounds = ctx.config["team"], ctx.config["size"], ctx.config["rounds"]
    subscription = _join_team(ctx, team)
    last = []
    while len(last) < size:
        data = subscription.receive(timeout=RECEIVE_TIMEOUT).data
        if data["kind"] == "finding" and data["round"] == rounds - 1:
            last.append(data["value"])
    return sorted(last)


def _join_team(ctx: TaskContext, team: str) -> workers.Subscription:
    """Subscribe to the team topic, say ready, and return once the host says go."""
    subscription = ctx.subscribe(team)
    ctx.publish(team, {"kind": "ready", "from": ctx.task_id})
    while subscription.receive(timeout=RECEIVE_TIMEOUT).data["kind"] != "go":
        pass
    return subscription


async def async_listener(ctx: TaskContext) -> Any:
    """listener for async handlers: ``async for`` over ctx.subscribe_async."""
    subscription = ctx.subscribe_async(ctx.config["topic"])
    ctx.publish(ctx.config["ready"], ctx.task_id)
    got = []
    async for message in subscription:
        got.append(message.data)
        if len(got) == ctx.config["count"]:
            break
    subscription.close()
    return got


def waiter(ctx: TaskContext) -> Any:
    """Submit a long child, say so on 'waiting', and wait for it (until cancelled)."""
    child = ctx.submit({"type": "sleep", "config": {"seconds": 120}})
    ctx.publish("waiting", child)
    return ctx.wait([child])
