"""`drlora generate`: a short demo run answers a demo question correctly; the flags, the chat switch, the base model
taken from the adapter, and the errors a user sees."""

import json

import pytest

from drlora_cli.main import main

# 300 steps of 16 examples at lr 3e-3 (about 2.4 epochs of the 2000 demo questions); see RUN_NOTE in the report.
RUN = ["--max-steps", "300", "--batch-size", "16", "--lr", "0.003"]
QUESTIONS = {"What is 23 plus 45?": "68", "What is 61 plus 17?": "78", "What is 90 minus 36?": "54",
             "What is 8 plus 80?": "88"}


@pytest.fixture(scope="module")
def demo_adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen-run") / "run"
    assert main(["train", "--model", "drlora-demo-moe", "--out", str(out), "--device", "cpu", *RUN]) == 0
    return out / "adapter"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_short_demo_run_answers_sums(demo_adapter, capsys):
    capsys.readouterr()
    args = ["generate", "--adapter", str(demo_adapter), "--max-new-tokens", "6", "--json", "--device", "cpu"]
    for question in QUESTIONS:
        args += ["--prompt", question]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"] == "drlora-demo-moe" and printed["chat"] is False  # the demo data is prompt_completion
    answers = {c["prompt"]: c["completion"].strip() for c in printed["completions"]}
    right = [q for q, a in QUESTIONS.items() if answers[q] == a]
    assert len(right) >= 3, answers  # the run gets most sums right; one miss is tolerated
    assert json.loads((demo_adapter / "drlora_ranks.json").read_text())["data_format"] == "prompt_completion"


@pytest.fixture(scope="module")
def quick_adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen-quick") / "run"
    assert main(["train", "--out", str(out), "--max-steps", "3", "--r-init", "2", "--r-target", "4",
                 "--growth-interval", "1"]) == 0
    return out / "adapter"


def test_prompts_file_text_output_and_sampling_flags(quick_adapter, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 1 plus 2?\n\nWhat is 5 minus 3?\n")
    capsys.readouterr()
    args = ["generate", "--adapter", str(quick_adapter), "--prompts-file", str(prompts), "--max-new-tokens", "4",
            "--temperature", "0.8", "--top-p", "0.9", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count(">>> ") == 2 and ">>> What is 5 minus 3?" in first
    assert main(args) == 0
    assert capsys.readouterr().out == first  # seeded


def test_chat_can_be_forced_and_changes_the_prompt(quick_adapter, capsys):
    capsys.readouterr()
    base = ["generate", "--adapter", str(quick_adapter), "--prompt", "What is 1 plus 2?", "--json",
            "--max-new-tokens", "8", "--model", "drlora-demo-moe"]
    assert main([*base, "--chat"]) == 0
    assert json.loads(capsys.readouterr().out)["chat"] is True
    assert main([*base, "--no-chat"]) == 0
    assert json.loads(capsys.readouterr().out)["chat"] is False


@pytest.mark.parametrize(("args", "message"), [
    (["--adapter", "nowhere", "--prompt", "x"], "neither a directory nor a job id"),
    (["--adapter", "ftjob-x", "--prompt", "x", "--checkpoint", "2", "--temperature", "-1"], "temperature"),
])
def test_errors_name_what_to_fix(args, message, capsys):
    assert main(["generate", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_directory_that_is_not_an_adapter_is_named(tmp_path, capsys):
    assert main(["generate", "--adapter", str(tmp_path), "--prompt", "x"]) == 2
    assert "drlora_ranks.json" in capsys.readouterr().err


def test_an_unreachable_service_is_named_for_a_job_id(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRLORA_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("DRLORA_API_KEY", "sk-test")
    monkeypatch.setenv("DRLORA_CACHE_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="cannot reach"):
        main(["generate", "--adapter", "ftjob-abc", "--prompt", "x"])
    assert not list((tmp_path / "adapters").iterdir())  # nothing half-downloaded is kept
