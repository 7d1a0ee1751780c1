"""The simplest OpenAI call on our own demo, end to end on PostgreSQL + Redis with a real worker:
`client.fine_tuning.jobs.create(model="drlora-demo-moe", training_file=<the demo train.jsonl>)` and nothing else.

It trains with every hyperparameter "auto" (1,500 steps on the demo), so it is the slowest e2e test: the time from
create to success is printed (run with `-s`) for docs/service.md. The deployment takes no periodic checkpoints
(`DRLORA_DEFAULT_CHECKPOINT_EVERY=0`), so the one checkpoint listed is the final step the worker records. Every answer
is validated strictly against the SDK's own types (tests/support/openai_strict.py).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types import FileObject, Model
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from drlora_cli.bootstrap import migrate, new_key, register_model
from tests.support.openai_strict import check, check_list
from tests.support.service import (
    HANG_GUARD_S,
    Api,
    demo_paths,
    free_port,
    make_settings,
    start_api,
    start_worker,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_GUARD_S)]


@pytest.fixture(scope="module")
def served(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("e2e-bare")
    settings = make_settings(data, pg_url, redis_url, task_queue=f"drlora-bare-{data.name}",
                             default_checkpoint_every=0)
    migrate(settings)
    register_model(settings, "drlora-demo-moe", demo_paths()[0])
    port = free_port()
    api = start_api(settings, port, data / "api.log")
    # One torch thread: on a CI machine shared with other processes, two OpenMP threads spin-waiting for each other
    # made a demo step 60x slower (6.7 s against 0.11 s, 60 steps each, at a load of 18 on 2 cores).
    worker = start_worker(settings, data / "worker.log", extra_env={"OMP_NUM_THREADS": "1"})
    try:
        yield f"http://127.0.0.1:{port}", new_key(settings, "bare-create").key
    finally:
        worker.stop()
        api.stop()


def raw(response: Any) -> Any:
    return response.http_response.json()


def test_a_bare_create_on_the_demo_succeeds_with_a_checkpoint(served: tuple[str, str]) -> None:
    url, key = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
    with open(demo_paths()[1], "rb") as f:
        training_file = client.files.create(file=f, purpose="fine-tune")
    started = time.monotonic()
    job = raw(client.fine_tuning.jobs.with_raw_response.create(model="drlora-demo-moe",
                                                               training_file=training_file.id))
    check(FineTuningJob, job)
    assert job["hyperparameters"]["n_epochs"] == 3 and job["hyperparameters"]["batch_size"] == 4
    with Api(url, key) as api:
        done = api.wait_status(job["id"], ("succeeded",))
    elapsed = time.monotonic() - started
    print(f"\nbare create on the demo: {done['progress']['step']} steps, create to succeeded in {elapsed:.0f} s "
          f"(slowest step {api.pace.slowest_step_s:.2f} s)")

    final = raw(client.fine_tuning.jobs.with_raw_response.retrieve(job["id"]))
    check(FineTuningJob, final)
    assert final["status"] == "succeeded" and final["estimated_finish"] is None
    checkpoints = check_list(FineTuningJobCheckpoint,
                             raw(client.fine_tuning.jobs.checkpoints.with_raw_response.list(job["id"])))
    assert [c["step_number"] for c in checkpoints] == [final["progress"]["step"]]
    check(Model, raw(client.models.with_raw_response.retrieve(checkpoints[0]["fine_tuned_model_checkpoint"])))
    check(Model, raw(client.models.with_raw_response.retrieve(final["fine_tuned_model"])))
    events = check_list(FineTuningJobEvent, raw(client.fine_tuning.jobs.with_raw_response.list_events(job["id"])))
    assert events[0]["message"].startswith("Job succeeded")
    [result_id] = final["result_files"]
    check(FileObject, raw(client.files.with_raw_response.retrieve(result_id)))
    rows = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
    assert len(rows) == final["progress"]["step"] and rows[-1]["mean_rank_layer_0"]
    client.close()
