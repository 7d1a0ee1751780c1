"""The job state machine on SQLite, in-process: every (state, verb) pair of the tables in `service.jobstate`'s
docstring is tried, and the row must end as the table says (or not change at all)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service import jobstate
from service.errors import Conflict
from service.ids import now
from service.jobstate import Fenced
from service.statuses import JobStatus, RequestedAction
from service.tables import Job
from tests.support.job_rows import event_count, job_in, messages, row_values, sqlite_factory

pytestmark = pytest.mark.timeout(60)

Verb = Callable[[Session, str], object]
VERBS: dict[str, Verb] = {
    "dispatch": lambda s, job_id: jobstate.dispatch(s, job_id),
    "claim": lambda s, job_id: jobstate.claim(s, job_id, "w2", lease_s=30),
    "finish": lambda s, job_id: jobstate.finish(s, job_id, 1, step=5, fine_tuned_model="ft:m:x", message="done"),
    "fail": lambda s, job_id: jobstate.fail(s, job_id, 1, code="training_error", message="boom"),
    "release": lambda s, job_id: jobstate.release(s, job_id, 1, step=3),
    "reclaim": lambda s, job_id: jobstate.reclaim(s, s.get_one(Job, job_id), now()),
    "cancel": lambda s, job_id: jobstate.cancel(s, s.get_one(Job, job_id)),
    "pause": lambda s, job_id: jobstate.pause(s, s.get_one(Job, job_id)),
    "resume": lambda s, job_id: jobstate.resume(s, s.get_one(Job, job_id)),
}
STATES = [*(status.value for status in JobStatus), "running+cancel", "running+pause"]


def parse_state(state: str) -> tuple[JobStatus, RequestedAction | None]:
    status, _, requested = state.partition("+")
    return JobStatus(status), RequestedAction(requested) if requested else None


def documented_table() -> dict[tuple[str, str], str]:
    """The cells of every table in the module docstring: (state, verb) -> what happens."""
    lines = (jobstate.__doc__ or "").splitlines()
    cells: dict[tuple[str, str], str] = {}
    for i, line in enumerate(lines):
        if line.split()[:1] != ["from"]:
            continue
        verbs = line.split()[1:]
        for row in lines[i + 1:]:
            if not row.strip():
                break
            state, *outcomes = row.split()
            assert len(outcomes) == len(verbs), row
            cells.update({(state, verb): outcome for verb, outcome in zip(verbs, outcomes, strict=True)})
    return cells


TABLE = documented_table()


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    with sqlite_factory(tmp_path_factory.mktemp("jobstate") / "db.sqlite") as f:
        yield f


def apply(factory: sessionmaker[Session], verb: str, job_id: str) -> tuple[object, Exception | None]:
    """Run the verb and commit whatever it wrote, also when it refused: a refusal must have written nothing."""
    with factory() as s:
        try:
            result, error = VERBS[verb](s, job_id), None
        except (Conflict, Fenced) as e:
            result, error = None, e
        s.commit()
    return result, error


def test_the_tables_cover_every_state_and_verb() -> None:
    assert set(TABLE) == {(state, verb) for state in STATES for verb in VERBS}


def check_effects(verb: str, before: dict[str, Any], after: dict[str, Any], result: object) -> None:
    """What the moving verbs write besides the status."""
    if verb == "dispatch":
        assert after["dispatched_at"] is not None and result is True
    elif verb == "claim":
        assert result == after["attempt"] == before["attempt"] + 1 and after["worker_id"] == "w2"
        assert after["lease_expires_at"] > now() + 20 and after["started_at"] is not None
    elif verb in ("finish", "fail", "release", "reclaim"):
        assert (after["worker_id"], after["lease_expires_at"], after["requested_action"]) == (None, None, None)
        ended = after["status"] in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
        assert (after["finished_at"] is not None) == ended
        if not ended:
            assert after["dispatched_at"] is None  # due to be sent again once resumed or requeued
    if verb == "finish":
        assert (after["step"], after["fine_tuned_model"]) == (5, "ft:m:x")
    if verb == "fail":
        assert after["error"]["code"] == "training_error"
    if verb == "reclaim":
        lost = after["status"] in (JobStatus.queued, JobStatus.failed)
        assert after["lost_attempts"] == before["lost_attempts"] + lost
    if verb in ("release", "reclaim"):
        assert result == after["status"]
    if verb == "cancel" and before["status"] != JobStatus.running:
        assert after["finished_at"] is not None
    if verb == "resume":
        assert result is (after["status"] == JobStatus.queued)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("verb", list(VERBS))
def test_every_state_and_verb_does_what_the_table_says(factory: sessionmaker[Session], state: str,
                                                        verb: str) -> None:
    cell = TABLE[(state, verb)]
    job_id = job_in(factory, *parse_state(state))
    before, events = row_values(factory, job_id), event_count(factory, job_id)
    result, error = apply(factory, verb, job_id)
    after = row_values(factory, job_id)
    if cell in ("-", "=", "409"):
        assert after == before, f"{verb} on {state} changed the row"
        assert event_count(factory, job_id) == events
        if cell == "409":
            assert isinstance(error, Conflict) and error.status_code == 409
        elif verb in ("finish", "fail", "release"):
            assert isinstance(error, Fenced)
        else:
            assert error is None and result in (None, False)
        return
    assert error is None, f"{verb} on {state} refused: {error}"
    expected = {parse_state(option) for option in cell.split("|")}
    assert (after["status"], after["requested_action"]) in expected
    assert event_count(factory, job_id) == events + (verb != "dispatch")  # a send to the broker is no event
    check_effects(verb, before, after, result)


def test_a_lost_job_fails_once_it_used_its_last_attempt(factory: sessionmaker[Session]) -> None:
    job_id = job_in(factory, JobStatus.running, lost_attempts=2, max_attempts=3)
    assert apply(factory, "reclaim", job_id) == (JobStatus.failed, None)
    after = row_values(factory, job_id)
    assert after["status"] == JobStatus.failed and after["lost_attempts"] == 3
    assert after["error"]["code"] == "worker_lost" and "3 attempts" in after["error"]["message"]


def test_reclaim_leaves_a_job_whose_lease_is_live(factory: sessionmaker[Session]) -> None:
    job_id = job_in(factory, JobStatus.running, lease_expires_at=now() + 60)
    before = row_values(factory, job_id)
    assert apply(factory, "reclaim", job_id) == (None, None)
    assert row_values(factory, job_id) == before


def test_reclaim_changes_nothing_when_a_request_arrived_after_the_sweep_read_the_row(
        factory: sessionmaker[Session]) -> None:
    job_id = job_in(factory, JobStatus.running)
    with factory() as sweep:
        seen = sweep.get_one(Job, job_id)
        sweep.expunge(seen)
    apply(factory, "cancel", job_id)
    with factory() as sweep:
        assert jobstate.reclaim(sweep, seen, now()) is None  # it would have requeued it, dropping the cancel
        sweep.commit()
    assert row_values(factory, job_id)["requested_action"] == RequestedAction.cancel


@pytest.mark.parametrize("verb", ["finish", "fail", "release"])
def test_a_stale_attempt_cannot_end_the_job(factory: sessionmaker[Session], verb: str) -> None:
    job_id = job_in(factory, JobStatus.running)
    with factory() as s:
        s.get_one(Job, job_id).attempt = 2  # the sweep requeued attempt 1 and attempt 2 claimed the job
        s.commit()
    before = row_values(factory, job_id)
    _, error = apply(factory, verb, job_id)  # every verb acts as attempt 1
    assert isinstance(error, Fenced) and row_values(factory, job_id) == before


def test_release_says_where_the_job_went(factory: sessionmaker[Session]) -> None:
    for requested, message in ((None, "Attempt 1 stopped at step 3; the job is queued"),
                               (RequestedAction.pause, "Job paused at step 3"),
                               (RequestedAction.cancel, "Job cancelled at step 3")):
        job_id = job_in(factory, JobStatus.running, requested)
        apply(factory, "release", job_id)
        assert messages(factory, job_id)[-1].startswith(message)


def test_a_client_request_decides_again_when_the_row_changed_under_it(factory: sessionmaker[Session]) -> None:
    job_id = job_in(factory, JobStatus.queued)
    with factory() as client:
        job = client.get_one(Job, job_id)  # the client reads it queued ...
        with factory() as worker:
            assert jobstate.claim(worker, job_id, "w", lease_s=30) == 1  # ... a worker claims it meanwhile ...
            worker.commit()
        jobstate.cancel(client, job)  # ... so cancelling asks the worker instead of ending the job
        client.commit()
    after = row_values(factory, job_id)
    assert (after["status"], after["requested_action"]) == (JobStatus.running, RequestedAction.cancel)


def test_a_pause_read_before_a_cancel_does_not_overwrite_it(factory: sessionmaker[Session]) -> None:
    job_id = job_in(factory, JobStatus.running)
    with factory() as pausing:
        job = pausing.get_one(Job, job_id)  # read with no request pending
        apply(factory, "cancel", job_id)  # another client cancels before the pause is written
        with pytest.raises(Conflict):
            jobstate.pause(pausing, job)
        pausing.commit()
    assert row_values(factory, job_id)["requested_action"] == RequestedAction.cancel


def test_client_requests_record_one_event_and_repeats_none(factory: sessionmaker[Session]) -> None:
    job_id = job_in(factory, JobStatus.queued)
    for verb in ("pause", "pause", "resume", "resume", "cancel", "cancel"):
        apply(factory, verb, job_id)
    assert messages(factory, job_id) == ["Job paused before it started",
                                         "Job resumed; it continues from its last checkpoint", "Job cancelled"]


def test_statuses_compare_equal_to_the_strings_stored_and_sent() -> None:
    assert JobStatus.succeeded == "succeeded" and f"{JobStatus.queued}" == "queued"
    assert "cancelled" in (JobStatus.succeeded, JobStatus.cancelled)
