"""The summary and description of every operation in the OpenAPI document, in one table (the routes stay short).

`describe(router)` applies them to a router's routes before it is included; `tests/service/test_svc_door.py` checks that every
operation of the document has both, so a new route needs its line here.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute

JOB = "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
OPERATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/healthz"): ("Liveness", "Answers 200 while the process serves requests; no authentication."),
    ("GET", "/readyz"): ("Readiness", "Answers 200 once the database answers; 503 while it is unreachable."),
    ("POST", "/v1/files"): (
        "Upload a training file",
        "Multipart `file` (JSONL) and `purpose` (`fine-tune`). The file is validated line by line while it is "
        "received; the first bad line, a line too many or a file over the size cap is refused at once with its "
        "line number, and nothing is kept. The stored name is the upload's base name in safe characters."),
    ("GET", "/v1/files"): ("List files", "The tenant's files, newest first; `after` (a file id) and `limit` page."),
    ("GET", "/v1/files/{file_id}"): ("Retrieve a file", "One file object: bytes, lines, format, purpose."),
    ("DELETE", "/v1/files/{file_id}"): (
        "Delete a file", "Deletes the file and its bytes; 409 `file_in_use` naming the job while a queued, running "
                         "or paused job uses it."),
    ("GET", "/v1/files/{file_id}/content"): (
        "Download a file's content", "The uploaded bytes, checked against the sha256 recorded at upload (`ETag`, "
                                     "`Digest`)."),
    ("GET", "/v1/models"): ("List models", "Base models this deployment trains, and the tenant's fine-tuned ones."),
    ("GET", "/v1/models/{model}"): ("Retrieve a model", "One base or fine-tuned model."),
    ("POST", "/v1/fine_tuning/jobs"): (
        "Create a fine-tuning job",
        "Validates the request into a run configuration (\"auto\" values resolved from the model and the file), "
        "refuses a plan that cannot run with 400 naming the parameter, then queues the job. `Idempotency-Key` "
        "makes a retry answer the same job."),
    ("GET", "/v1/fine_tuning/jobs"): (
        "List fine-tuning jobs", "The tenant's jobs, newest first; `after`, `limit` and `metadata[k]=v` filters."),
    ("GET", JOB): ("Retrieve a fine-tuning job", "The job object, with `progress` and `pending_action` extensions."),
    ("POST", f"{JOB}/cancel"): (
        "Cancel a fine-tuning job", "A queued or paused job is cancelled at once; a running one at its worker's next "
                                    "step (`pending_action` shows `cancel` until then). Idempotent."),
    ("POST", f"{JOB}/pause"): (
        "Pause a fine-tuning job", "A queued job is paused at once; a running one checkpoints and releases its "
                                   "worker at the next step (`pending_action` shows `pause` until then)."),
    ("POST", f"{JOB}/resume"): (
        "Resume a fine-tuning job", "A paused job is queued again and continues from its last checkpoint; a pending "
                                    "pause is withdrawn."),
    ("GET", f"{JOB}/events"): (
        "List a job's events",
        "Events oldest first, numbered per job (`ftevent-1` is the job's first); `after` and `limit` page. With "
        "`stream=true`, server-sent events until the job stops: `Last-Event-ID` resumes a stream, idle streams get "
        "a keep-alive comment, and each key may hold a few streams open (429 `too_many_streams` above)."),
    ("GET", f"{JOB}/checkpoints"): ("List a job's checkpoints", "Checkpoints newest first, with their metrics."),
    ("GET", f"{JOB}/ranks"): (
        "A job's rank map", "Active LoRA rank per layer and expert, and the growth events; `step` gives the map then."),
    ("GET", f"{JOB}/experts"): (
        "A job's expert statistics", "Latest routing frequency, importance and saliency per layer and expert."),
    ("GET", f"{JOB}/metrics"): (
        "A job's metric series", "Train and validation loss, learning rate and tokens per second by step."),
    ("GET", f"{JOB}/adapter"): (
        "Download a job's adapter",
        "The trained adapter as a zip (PEFT layout and `drlora_ranks.json`); `checkpoint` for an intermediate one; "
        "`ETag` holds its sha256. `layout`, `dtype`, `base_model_name_or_path` and `max_rank` ask for an export: "
        "its zip once built, else 202 with the export object, `Location` and `Retry-After`. `Range: bytes=N-` "
        "resumes a download (206); `If-Range` with the ETag."),
    ("POST", f"{JOB}/exports"): (
        "Export a job's adapter",
        "Queues a worker to build the adapter (or a checkpoint's) in another layout (`fused`, `per_expert`, "
        "`merged`), dtype, base model name or rank cap. 201 with the new export; the same options again answer the "
        "same export with 200 (a failed one is queued again). A bad option answers 400 naming it."),
    ("GET", f"{JOB}/exports"): ("List a job's exports", "The job's exports, newest first, with status and progress."),
    ("GET", f"{JOB}/exports/{{export_id}}"): (
        "Retrieve an export", "Status, `progress` (0 to 1) and `stage` while a worker builds it; `sha256` and "
                              "`bytes` once it succeeded; `error` if it failed."),
    ("GET", f"{JOB}/exports/{{export_id}}/content"): (
        "Download an export", "The export's zip once it succeeded (409 `export_not_ready` before); `ETag` holds its "
                              "sha256; `Range: bytes=N-` resumes (206)."),
    ("POST", "/v1/webhooks"): (
        "Register a webhook endpoint",
        "`url` and `events` (`fine_tuning.job.succeeded`, `.failed`, `.cancelled`, `.growth`). Answers the endpoint "
        "with its signing secret, shown once; deliveries are signed per the Standard Webhooks spec."),
    ("GET", "/v1/webhooks"): ("List webhook endpoints", "The tenant's endpoints (without their secrets)."),
    ("GET", "/v1/webhooks/{webhook_id}"): ("Retrieve a webhook endpoint", "One endpoint, without its secret."),
    ("DELETE", "/v1/webhooks/{webhook_id}"): (
        "Delete a webhook endpoint", "Deletes the endpoint and drops its pending deliveries."),
    ("POST", "/v1/fine_tuning/profiles"): (
        "Profile routing before training",
        "Runs the base model forward over up to `max_examples` of a training file in a worker, without training: "
        "the share of routed tokens per layer x expert, token lengths, the fraction cut by `max_seq_len`, and the "
        "ranks `static` would fix at the budget."),
    ("GET", "/v1/fine_tuning/profiles/{profile_id}"): (
        "Retrieve a routing profile", "The profile's status and, once it succeeded, its result."),
    ("POST", f"{JOB}/generations"): (
        "Try a job's adapter on prompts",
        "Asks a worker for completions of 1 to 8 `prompts` by the job's adapter (or a `checkpoint`'s), formatted as "
        "the training data was (chat: one user turn through the model's chat template); greedy unless `temperature` "
        "is above 0. Answers 201 with the queued generation; 409 while the job has no adapter yet."),
    ("GET", f"{JOB}/generations/{{generation_id}}"): (
        "Retrieve a generation", "The generation's status and, once it succeeded, one completion per prompt."),
}


def describe(router: APIRouter) -> None:
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        for method in route.methods or ():
            # a `{name:path}` converter is shown as plain `{name}` in the document
            if (found := OPERATIONS.get((method, route.path.replace(":path}", "}")))) is not None:
                route.summary, route.description = found
