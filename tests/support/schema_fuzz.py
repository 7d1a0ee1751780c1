"""Run schemathesis's engine (what `schemathesis run` runs: examples, coverage, fuzzing and stateful phases) against
an ASGI app in this process and collect what it saw: cases, statuses per operation, check failures, errors.

The engine is driven directly instead of through schemathesis's pytest plugin: the plugin's lazy fixture loader
(`schemathesis.pytest.from_fixture`) sets `Node._nodeid`, which pytest 9.2 no longer has, and a schema loaded at import
time could not use the per-backend fixtures.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import events, from_schema

# RELIABILITY 24: no server error, no undocumented status, the documented content type and schema.
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")


@dataclass
class FuzzReport:
    cases: int = 0
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    def summary(self) -> dict[str, Any]:
        return {"cases": self.cases, "requests": self.requests, "failures": self.failures,
                "statuses": {label: dict(sorted(c.items())) for label, c in sorted(self.statuses.items())}}


def fuzz_config(key: str, *, seed: int, max_examples: int, request_timeout_s: float) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": seed,
        "headers": {"Authorization": f"Bearer {key}"},
        "request-timeout": request_timeout_s,
        "continue-on-failure": True,
        "generation": {"max-examples": max_examples, "database": "none"},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })


def sometimes(real: dict[str, Any], on_delete: dict[str, Any] | None = None) -> Any:
    """A `flatmap_*` hook: each named field is either the real value given or what schemathesis generated.

    The real value comes first: Hypothesis's early examples are its simplest choices (index 0), and the coverage
    phase, which hooks do not touch, already sends the generated (unknown) ids a great many times. A DELETE gets the
    `on_delete` values instead, so that it does not delete what the other operations use."""

    def hook(ctx: Any, values: Any) -> Any:
        if not isinstance(values, dict):
            return st.just(values)
        deleting = on_delete is not None and ctx.operation is not None and ctx.operation.method.lower() == "delete"
        chosen = on_delete if deleting and on_delete is not None else real
        return st.fixed_dictionaries({name: st.sampled_from([chosen[name], value]) if name in chosen
                                      else st.just(value) for name, value in values.items()})

    return hook


def load_schema(app: Any, cfg: schemathesis.Config, path_ids: dict[str, str], body_values: dict[str, Any],
         delete_ids: dict[str, str]) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=cfg)
    schema.hook("flatmap_path_parameters")(sometimes(path_ids, delete_ids))
    schema.hook("flatmap_body")(sometimes(body_values))
    return schema


def _record(report: FuzzReport, event: events.ScenarioFinished) -> None:
    recorder = event.recorder
    report.cases += len(recorder.cases)
    for interaction in recorder.interactions.values():
        if interaction.response is not None:
            label = event.label or f"stateful {interaction.request.method}"
            report.statuses.setdefault(label, Counter())[interaction.response.status_code] += 1
    for nodes in recorder.checks.values():
        for node in nodes:
            if node.failure_info is not None:
                info = node.failure_info
                report.failures.append(f"{event.label}: {node.name}: {info.failure.title}\n{info.code_sample}")


def run_fuzz(schema: Any) -> FuzzReport:
    report = FuzzReport()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            _record(report, event)
        elif isinstance(event, events.NonFatalError):  # in-process, an exception the app raised lands here
            report.failures.append(f"{event.label}: error: {event.info.message}")
        elif isinstance(event, events.FatalError):
            report.failures.append(f"fatal: {event.exception!r}")
    return report
