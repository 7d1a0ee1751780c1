"""The new-job form's pre-flight box: filled from a `dry_run` create as the user edits (debounced), with the peak
memory by part and whether a worker can hold the job (the embedded worker of `drlora serve` reports its memory)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import func, select

from service.db import make_engine
from service.tables import Worker
from tests.browser.conftest import Served, sign_in
from tests.support.service import demo_paths, wait_until

pytestmark = pytest.mark.timeout(300)


def test_the_estimate_box_follows_the_form_and_says_which_worker_holds_it(page: Page, served: Served) -> None:
    _, train, _ = demo_paths()
    engine = make_engine(served.database_url)
    try:  # the served worker reports its memory once it has started (it imports torch first)
        with engine.connect() as conn:
            wait_until(lambda: conn.execute(select(func.count()).select_from(Worker)).scalar(), timeout=180,
                       what="the served worker's report")
    finally:
        engine.dispose()
    sign_in(page, served)
    page.goto(f"{served.url}/ui/#/new")
    page.get_by_label("Upload a JSONL dataset").set_input_files(train)
    expect(page.get_by_text("train.jsonl is valid")).to_be_visible()
    box = page.locator("#estimate")
    parts = box.get_by_role("table", name="peak memory by part")
    expect(parts).to_contain_text("activations")
    expect(parts).to_contain_text("base weights")
    expect(box).to_contain_text(re.compile(r"GiB peak on cpu"))
    expect(box.locator("[data-fits=yes]")).to_contain_text("Fits on: CPU")  # the served worker reported

    def peak() -> str:
        return parts.locator("tr.total td").text_content() or ""

    before = peak()
    page.get_by_label("batch_size", exact=True).fill("64")
    page.get_by_label("max_seq_len", exact=True).fill("384")  # within the demo model's 512 positions
    expect(parts.locator("tr.total td")).not_to_have_text(before)  # refreshed from a new dry run
    assert float(peak().split()[0]) > float(before.split()[0])
    jobs = served.api.get("/v1/fine_tuning/jobs").json()["data"]
    assert not any(j["created_at"] and j["hyperparameters"].get("max_seq_len") == 384 for j in jobs)  # dry runs only
