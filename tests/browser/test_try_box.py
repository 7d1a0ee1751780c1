"""The job page's "Try it" box in Debian's chromium: on a finished job (trained by the served worker), enter a prompt,
press Generate, and the worker's completion appears, matching what the API answers for the same generation; a
checkpoint can be chosen instead of the final adapter."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Served, sign_in
from tests.support.service import demo_paths, dr_lora


def finished_job(served: Served) -> str:
    data = "".join(demo_paths()[1].read_text().splitlines(keepends=True)[:40])
    r = served.api.http.post("/v1/files", files={"file": ("try.jsonl", data)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    r = served.api.post("/v1/fine_tuning/jobs", json={"model": "drlora-demo-moe", "training_file": r.json()["id"],
                                                      "method": dr_lora()})
    assert r.status_code == 200, r.text
    job_id = str(r.json()["id"])
    served.api.wait_status(job_id, ("succeeded",))
    return job_id


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_prompt_on_a_finished_job_gets_a_completion(page: Page, served: Served) -> None:
    job_id = finished_job(served)
    sign_in(page, served)
    page.goto(f"{served.url}/ui/#/jobs/{job_id}")
    adapter = page.get_by_label("Adapter", exact=True)
    expect(adapter.locator("option")).to_have_count(4)  # the final adapter and the checkpoints at steps 2, 4, 6
    expect(adapter).to_have_value("")  # the final adapter first
    page.get_by_label("Prompt").fill("What is 12 plus <b>7</b>?")
    page.get_by_label("Max new tokens").fill("5")
    with page.expect_response(lambda r: r.url.endswith("/generations") and r.request.method == "POST") as posted:
        page.get_by_role("button", name="Generate").click()
    assert posted.value.status == 201
    generation_id = posted.value.json()["id"]
    answers = page.get_by_role("list", name="completions").locator("li")
    served.api.wait_done(f"/v1/fine_tuning/jobs/{job_id}/generations/{generation_id}", "the generation")
    expect(answers).to_have_count(1)  # the page polls every second
    expect(answers.locator(".prompt")).to_have_text("What is 12 plus <b>7</b>?")  # shown as text, not markup
    assert page.locator(".completions b").count() == 0
    expect(page.locator("#try-state")).to_have_text("Step 6:")
    answered = served.api.get(f"/v1/fine_tuning/jobs/{job_id}/generations/{generation_id}").json()
    assert answered["status"] == "succeeded" and answered["max_new_tokens"] == 5
    expect(answers.locator(".completion")).to_have_text(answered["completions"][0]["text"])

    adapter.select_option(label="checkpoint at step 2")
    with page.expect_response(lambda r: r.url.endswith("/generations") and r.request.method == "POST") as posted:
        page.get_by_role("button", name="Generate").click()
    assert posted.value.json()["step"] == 2
    served.api.wait_done(f"/v1/fine_tuning/jobs/{job_id}/generations/{posted.value.json()['id']}", "the generation")
    expect(answers).to_have_count(2)
    expect(page.locator("#try-state")).to_have_text("Step 2:")
