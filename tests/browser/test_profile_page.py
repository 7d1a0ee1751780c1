"""The routing profile on the new-job form, in Debian's chromium: pick the demo file, press "Profile routing", and
the heatmap shows the profile the API answers (4 layers x 16 experts of the demo model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Served, sign_in
from tests.support.service import demo_paths


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_profile_routing_from_the_new_job_form(page: Page, served: Served, tmp_path: Path) -> None:
    small = tmp_path / "profile.jsonl"
    small.write_text("".join(demo_paths()[1].read_text().splitlines(keepends=True)[:24]))
    sign_in(page, served)
    page.goto(f"{served.url}/ui/#/new")
    button = page.get_by_role("button", name="Profile routing")
    expect(button).to_be_disabled()  # no training file chosen yet
    page.get_by_label("Upload a JSONL dataset").set_input_files(small)
    expect(page.get_by_text("profile.jsonl is valid")).to_be_visible()
    expect(button).to_be_enabled()
    button.click()
    expect(page.locator("#profile-status")).to_contain_text("succeeded", timeout=300_000)
    heatmap = page.get_by_role("img", name="routing share")
    expect(heatmap).to_have_attribute("aria-label", re.compile(r"^routing share: 4 layers x 16 experts, from "))
    expect(page.locator(".profile-facts")).to_contain_text("24 records")
    profile_id = page.locator("#profile-status").inner_text().split()[1]
    answered = served.api.get(f"/v1/fine_tuning/profiles/{profile_id}").json()
    assert answered["status"] == "succeeded" and len(answered["frequency"]) == 4
