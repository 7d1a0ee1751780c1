"""`drlora profiles create | get`: the routing profile of a base model on a training file, before training.

It prints the routing shares per layer x expert and the rank map `static` would fix from them, both with
`drlora train`'s glyphs (folded to the terminal's width), the token lengths and what max_seq_len cuts; `--json`
prints the API's object. `create --wait` polls until the profile ends: exit 0 when it succeeded, 1 when it failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
import time
from typing import Any

from drlora_cli import render

PER_MILLE = 1000
DONE = ("succeeded", "failed")


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("profiles", help="routing profiles before training").add_subparsers(
        dest="profiles_command", required=True)
    p = group.add_parser("create", help="profile a base model's routing on a training file (no training)")
    p.add_argument("--model", default="drlora-demo-moe")
    p.add_argument("--file", required=True, dest="training_file", help="file id from `drlora files upload`")
    p.add_argument("--max-examples", type=int)
    p.add_argument("--max-seq-len", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    for name in ("r_init", "r_target", "r_max"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name, help="default: auto, as for a job")
    p.add_argument("--wait", action="store_true", help="wait for the result (exit 0 succeeded, 1 failed)")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(handler=profiles_create)
    p = group.add_parser("get", help="show a routing profile")
    p.add_argument("profile_id")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(handler=profiles_get)


def profiles_create(args: argparse.Namespace) -> int:
    from drlora_cli.client_cmds import _client, _run

    names = ("max_examples", "max_seq_len", "batch_size", "seed", "r_init", "r_target", "r_max")
    body = {"model": args.model, "training_file": args.training_file,
            **{n: getattr(args, n) for n in names if getattr(args, n) is not None}}
    outcome: dict[str, Any] = {}

    def create() -> None:
        client = _client()
        profile = client.post("/fine_tuning/profiles", json=body)
        while args.wait and profile["status"] not in DONE:
            time.sleep(args.interval)
            profile = client.get(f"/fine_tuning/profiles/{profile['id']}")
        outcome.update(profile)
        show(profile, args.json)

    return _run(create) or (1 if outcome.get("status") == "failed" else 0)


def profiles_get(args: argparse.Namespace) -> int:
    from drlora_cli.client_cmds import _client, _run

    return _run(lambda: show(_client().get(f"/fine_tuning/profiles/{args.profile_id}"), args.json))


def show(profile: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(profile, indent=2))
        return
    print("\n".join(summary_lines(profile, shutil.get_terminal_size().columns)))


def summary_lines(profile: dict[str, Any], width: int) -> list[str]:
    hp = profile["hyperparameters"]
    lines = textwrap.wrap(f"{profile['id']}  {profile['status']}  {profile['model']} on {profile['training_file']}",
                          width)
    if profile.get("error"):
        lines += textwrap.wrap(f"error: {profile['error']['code']}: {profile['error']['message']}", width)
    if profile["status"] != "succeeded":
        return lines
    lengths, cut = profile["lengths"], profile["truncation"]
    prose = [
        f"profiled {profile['examples']} examples, {profile['tokens']} tokens (batch {hp['batch_size']}, "
        f"seed {hp['seed']})",
        f"lengths of {lengths['records']} records: min {lengths['min']}, p50 {lengths['p50']}, p90 {lengths['p90']}, "
        f"max {lengths['max']} tokens",
        f"max_seq_len {cut['max_seq_len']} cuts {cut['cut_fraction']:.1%} of the tokens "
        f"({cut['truncated_examples']} records cut, {cut['dropped_examples']} dropped)",
    ]
    lines += [wrapped for line in prose for wrapped in textwrap.wrap(line, width)]
    lines += [
        "", "routing share per layer x expert:", *share_lines(profile["frequency"], width),
        "", f"static would allocate (r_init {hp['r_init']}, r_target {hp['r_target']}, r_max {hp['r_max']}):"[:width],
        *render.rank_lines(profile["static_ranks"], int(hp["r_max"]), width),
    ]
    return lines


def share_lines(shares: list[list[float]], width: int) -> list[str]:
    """The shares with the rank map's glyphs, darker for a larger share (of the largest one), folded to `width`."""
    if not shares:
        return []
    scaled = [[round(s * PER_MILLE) for s in row] for row in shares]
    top = max(max(row) for row in scaled) or 1
    folded = render.fold(scaled, width - 6)
    lines = [f"{f'L{layer}':<5}|{''.join(render.glyph(v, top) for v in row)}|" for layer, row in enumerate(folded.rows)]
    if folded.mapping():
        lines.append(folded.mapping().replace("rank", "share")[:width])
    levels = len(render.SHADES) - 1
    marks = " ".join(f"{render.SHADES[i]}={i * top / levels / 10:.1f}%" for i in range(1, levels + 1))
    lines.append(f"share: {marks}"[:width])
    return lines
