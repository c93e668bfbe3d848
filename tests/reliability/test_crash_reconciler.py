"""`kill -9` of the reconciler mid-attempt, then a restart: nothing is duplicated, lost, or left unexplained.

One forge for the module. Each kill point gets a fresh store: a child process runs what `greenloop reconcile`
does (one pass, wait for the attempts) with the scripted model, and is SIGKILLed once k audit rows exist
(k = 0..8 over the tool sequence, bug-lib alone then data-job alone) or after a seeded random delay (both
projects at once). A second child, with a 0.5 s heartbeat and a 2 s attempt timeout, then runs passes until
nothing moves. Children are forked from a zygote that imported the reconciler once (crash_support.Zygote):
each is still a separate process that SIGKILL ends without cleanup. A fix merged in one round is undone
(main's broken tree committed again) before the next round.

Known gap, counted in the summary line but not asserted: a worker killed after `commit_and_push` and before
`create_pull_request` is resumed, its replay finds nothing to commit, and the attempt ends failed(no_fix)
with its fix branch pushed and no PR ("stranded fix branches").
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from crash_support import APP_PERMISSIONS, Kill, Rebreaker, Zygote, check_store, forge_refs, kill_when

from fixtures.forge import Forge, run_forge
from fixtures.projects.catalog import load_project
from policy.config import AgentSettings, GreenloopConfig, ServerSettings
from policy.types import AttemptStatus

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PROJECTS = ("bug-lib", "data-job")
TOOLS_PER_ATTEMPT = 8  # fixtures/scripts/{bug-lib,data-job}.json: logs, 2 reads, branch, write, push, PR, merge
FIX_PREFIX = "refs/heads/greenloop/fix/"
ATTEMPT_TIMEOUT = 2.0
DEAD_WORKER_REASONS = ("resumed_after_worker_died", "worker_died", "worker_died_after_pr")


def heartbeat_problems(transitions: list[dict[str, Any]], killed_at: datetime | None) -> list[str]:
    """A worker is declared dead only after it was killed, only once its last sign of life (at least the
    transition before) is older than the attempt timeout, and soon after that; never when it was not killed."""
    problems: list[str] = []
    previous: dict[str, datetime] = {}
    for t in transitions:
        at = datetime.fromisoformat(str(t["at"])).replace(tzinfo=UTC)
        if t["reason"] in DEAD_WORKER_REASONS:
            where = f"attempt {t['attempt_id']} {t['reason']} at {at.time()}"
            if killed_at is None:
                problems.append(f"{where}, but its worker was never killed")
            else:
                if at < killed_at - timedelta(seconds=1):
                    problems.append(f"{where}, before the kill at {killed_at.time()}")
                if at > killed_at + timedelta(seconds=ATTEMPT_TIMEOUT + 30):
                    problems.append(f"{where}, long after the kill at {killed_at.time()}")
            before = previous.get(t["attempt_id"])
            if before is not None and at - before < timedelta(seconds=ATTEMPT_TIMEOUT):
                problems.append(f"{where}, less than the timeout after its previous transition at {before.time()}")
        previous[t["attempt_id"]] = at
    return problems


def kill_points() -> list[tuple[Kill, tuple[str, ...]]]:
    """Each project alone, killed once k = 0..8 audit rows exist (before every step of its tool sequence and
    after the last); then both projects at once, killed after seeded random delays and row counts."""
    rng = random.Random(20261125)
    rows = [(Kill(rows=k), (name,)) for name in PROJECTS for k in range(TOOLS_PER_ATTEMPT + 1)]
    delays = [(Kill(delay=round(rng.uniform(0.2, 2.0), 2)), PROJECTS) for _ in range(2)]
    both = [(Kill(rows=rng.randint(1, 2 * TOOLS_PER_ATTEMPT - 2)), PROJECTS) for _ in range(2)]
    return rows + delays + both


def extra_point(i: int) -> tuple[Kill, tuple[str, ...]]:
    """A further kill point, early in one project's tool sequence, for when a child finished before its kill."""
    return (Kill(rows=i % (TOOLS_PER_ATTEMPT - 2)), (PROJECTS[i % len(PROJECTS)],))


def config_for(forge: Forge, work: Path, names: tuple[str, ...]) -> GreenloopConfig:
    projects = []
    for name in names:
        f = load_project(name)
        projects.append(f.project_config())
    return GreenloopConfig(
        server=ServerSettings(
            database_url=f"sqlite+aiosqlite:///{work / 'greenloop.db'}",
            workspace_dir=str(work / "workspaces"),
            concurrency=4,
            attempt_timeout_seconds=ATTEMPT_TIMEOUT,
        ),
        forge=forge.forge_settings(),
        agent=AgentSettings(),
        projects=tuple(projects),
    )


def _repo(forge: Forge, name: str):  # type: ignore[no-untyped-def]
    owner, repo = load_project(name).repo.split("/", 1)
    found = forge.state.repo(owner, repo)
    assert found is not None
    return found


def forge_problems(
    forge: Forge,
    before: dict[str, dict[str, str]],
    after: dict[str, dict[str, str]],
    attempts: list[dict[str, Any]],
) -> list[str]:
    """Refs moved only on this round's fix branches (and main by a merge of one); one PR per fix branch;
    every PR on a fix branch known to its attempt."""
    problems: list[str] = []
    ours = {a["id"]: a for a in attempts}
    for name in PROJECTS:
        repo = _repo(forge, name)
        per_head = Counter(p.head_ref for p in repo.pulls.values())
        problems += [f"{name}: {n} PRs on {head}" for head, n in per_head.items() if n > 1]
        merged_into_main = set()
        for pull in repo.pulls.values():
            attempt_id = pull.head_ref.rsplit("-", 1)[-1]
            if attempt_id not in ours:
                continue
            a = ours[attempt_id]
            if pull.merged and pull.merge_commit_sha:
                merged_into_main.add(pull.merge_commit_sha)
            if a["status"] in (AttemptStatus.FAILED.value, AttemptStatus.PENDING.value, AttemptStatus.RUNNING.value):
                problems.append(f"{name}: PR #{pull.number} of attempt {attempt_id} lost (attempt {a['status']})")
            elif a["pr_number"] != pull.number:
                problems.append(f"{name}: attempt {attempt_id} records PR {a['pr_number']}, forge has #{pull.number}")
        old, new = before[name], after[name]
        for ref in sorted(set(old) | set(new)):
            if old.get(ref) == new.get(ref):
                continue
            if ref.startswith(FIX_PREFIX) and ref.rsplit("-", 1)[-1] in ours and ref in new:
                continue
            if ref.startswith("refs/pull/"):
                continue
            if ref == "refs/heads/main" and new.get(ref) in merged_into_main:
                continue
            problems.append(f"{name}: ref {ref} moved {old.get(ref)} -> {new.get(ref)}")
    return problems


@pytest.mark.timeout(900)
async def test_kill_9_at_twenty_two_points_then_restart_duplicates_and_loses_nothing(tmp_path: Path) -> None:
    points = kill_points()
    assert len(points) >= 20
    async with run_forge(tmp_path / "forge", projects=list(PROJECTS), app_permissions=APP_PERMISSIONS) as forge:
        await forge.wait_idle(60)
        zygote = await Zygote.start(admin_token=forge.admin_token, home=tmp_path)
        try:
            await _rounds(forge, zygote, points, tmp_path)
        finally:
            await zygote.aclose()


async def _rounds(forge: Forge, zygote: Zygote, points: list[tuple[Kill, tuple[str, ...]]], tmp_path: Path) -> None:
    rebreaker = Rebreaker(forge.git_url, forge.admin_token, tmp_path)
    broken = {n: (await forge_refs(_repo(forge, n).git_dir))["refs/heads/main"] for n in PROJECTS}
    broken_tree = dict(broken)
    secrets = [forge.admin_token, await asyncio.to_thread(Path(forge.private_key_path).read_text)]
    killed = exited = total_attempts = stranded = 0
    outcomes: Counter[str] = Counter()
    for i, (kill, names) in enumerate(points):
        work = tmp_path / f"round-{i:02d}"
        work.mkdir()
        for name in names:  # a fix merged in an earlier round: make main red again (the store is fresh anyway)
            if (await forge_refs(_repo(forge, name).git_dir))["refs/heads/main"] != broken[name]:
                await rebreaker.rebreak(load_project(name).repo, broken_tree[name])
                await forge.wait_idle(60)
                broken[name] = (await forge_refs(_repo(forge, name).git_dir))["refs/heads/main"]
        before = {n: await forge_refs(_repo(forge, n).git_dir) for n in PROJECTS}
        config_path = work / "greenloop.json"
        config_path.write_text(config_for(forge, work, names).model_dump_json(), encoding="utf-8")
        db = work / "greenloop.db"
        label = f"round {i} ({kill.label} on {', '.join(names)})"

        child = await zygote.spawn("start", config_path, work / "start.log")
        how = await kill_when(child, kill, db)
        killed_at = datetime.now(UTC) if how == "killed" else None
        killed += how == "killed"
        exited += how == "exited"

        restart = await zygote.spawn("settle", config_path, work / "settle.log")
        code = await restart.wait()
        assert code == 0, f"{label}: the restart did not settle:\n{(work / 'settle.log').read_text()[-3000:]}"
        await forge.wait_idle(60)

        snap = check_store(db, secrets=[*secrets, *forge.auth._tokens])
        after = {n: await forge_refs(_repo(forge, n).git_dir) for n in PROJECTS}
        problems = snap.problems + forge_problems(forge, before, after, snap.attempts)
        problems += heartbeat_problems(snap.transitions, killed_at)
        assert not problems, f"{label}, {how}: {json.dumps(problems, indent=1)}"
        assert sorted(a["project"] for a in snap.attempts) == sorted(names), f"{label}: attempts {snap.attempts}"
        total_attempts += len(snap.attempts)
        # An attempt resumed after its worker pushed the fix but before the PR must still open its PR (the
        # workspace pushes its own earlier commit again): a failed attempt with a pushed branch and no PR is
        # a stranded fix.
        for a in snap.attempts:
            ref = f"refs/heads/{a['branch']}"
            if a["status"] == AttemptStatus.FAILED.value and ref in after[a["project"]] and a["pr_number"] is None:
                stranded += 1
        print(f"{label}: {how}, {[(a['status'], a['stop_reason']) for a in snap.attempts]}", flush=True)
        if i == len(points) - 1 and killed < 20 and len(points) < 34:
            points.append(extra_point(i))  # a fast machine may finish before some kill points: add early ones
        for a in snap.attempts:
            outcomes[f"{a['status']}({a['stop_reason'] or '-'})"] += 1
    print(
        f"\ncrash: {len(points)} kill points ({killed} killed, {exited} ended first), {total_attempts} attempts, "
        f"duplicates 0, lost 0; stranded fix branches {stranded}; outcomes {dict(outcomes)}"
    )
    assert killed >= 20, f"only {killed} of {len(points)} kill points hit a live child"
    assert stranded == 0, f"{stranded} fix branch(es) pushed with no PR"
