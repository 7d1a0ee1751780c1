"""`drlora train`: one DR-LoRA run on this machine, without the service."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from drlora_cli.render import rank_summary

if TYPE_CHECKING:
    from drlora_core.callbacks import ExpertStats, GrowthEvent, StepMetrics, StopReason

from drlora_core.config import AUTO, DTYPES, METHODS, SALIENCY_SIGNALS, STATIC_PROFILES, RunConfig

DEFAULT = RunConfig()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="fine-tune a local MoE model (or the bundled demo) with DR-LoRA",
                              description="Train per-expert LoRA with dynamic ranks and write a PEFT adapter.")
    add_run_flags(p)
    p.add_argument("--out", type=Path, required=True, help="output directory (checkpoints/, adapter/)")
    p.add_argument("--merged", action="store_true", help="also write --out/merged: the base model with the "
                                                         "adapter merged into its weights")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.set_defaults(handler=run)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The model, data and RunConfig flags of `drlora train`, shared with `drlora estimate` (one set of defaults:
    RunConfig's)."""
    p.add_argument("--model", default="drlora-demo-moe",
                   help="local Hugging Face model directory, or drlora-demo-moe (default)")
    p.add_argument("--train", type=Path, help="training JSONL (chat, prompt/completion or text); "
                                              "default: the demo dataset when --model is the demo")
    p.add_argument("--val", type=Path, help="validation JSONL (default: the demo validation set with the demo)")
    lora, train = DEFAULT.lora, DEFAULT.train
    p.add_argument("--method", choices=METHODS, default=lora.method, help="(default: %(default)s)")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=int, default=train.max_steps,
                       help="optimizer steps; overrides --epochs (default: %(default)s)")
    steps.add_argument("--epochs", type=_int_or_auto, default=train.epochs,
                       help="passes over the training data; auto: 3, more for small files, fewer for "
                            "large ones (default: %(default)s)")
    p.add_argument("--batch-size", type=_int_or_auto, default=train.batch_size,
                   help="auto: ~0.2%% of the examples, 1 to 256 (default: %(default)s)")
    p.add_argument("--lr", type=_float_or_auto, default=train.lr,
                   help="auto: 1e-3 up to 50M parameters, falling to 2e-5 at 1B (default: %(default)s)")
    p.add_argument("--r-init", type=_int_or_auto, default=lora.r_init,
                   help="auto: r_target / 2 (default: %(default)s)")
    p.add_argument("--r-target", type=_int_or_auto, default=lora.r_target,
                   help="auto: 16, or 4 for models up to 50M parameters (default: %(default)s)")
    p.add_argument("--r-max", type=_int_or_auto, default=lora.r_max,
                   help="auto: 2 * r_target (lora: r_target), a multiple of 8 (default: %(default)s)")
    p.add_argument("--growth-interval", type=_int_or_auto, default=lora.growth_interval,
                   help="optimizer steps between growth events; auto: the paper's 18 events over the run "
                        "(default: %(default)s)")
    p.add_argument("--growth-end-ratio", type=float, default=lora.growth_end_ratio,
                   help="the last growth event at or before this share of the steps (default: %(default)s)")
    p.add_argument("--saliency-signal", choices=SALIENCY_SIGNALS, default=lora.saliency_signal,
                   help="what growth ranks experts by: the paper's f_g, f or g alone, or g_per_token (our variant: "
                        "importance per routed token) (default: %(default)s)")
    p.add_argument("--per-slice-adam-steps", action="store_true", default=lora.per_slice_adam_steps,
                   help="AdamW bias correction keyed on each rank slice's own age (default: %(default)s)")
    p.add_argument("--static-profile", choices=STATIC_PROFILES, default=lora.static_profile,
                   help="static: ranks from routing counts, or from f*g over the warmup steps (default: %(default)s)")
    p.add_argument("--train-router", action="store_true", default=train.train_router,
                   help="train the router after warmup, with the model's load-balancing loss (default: %(default)s)")
    p.add_argument("--router-aux-loss-coef", type=float, default=train.router_aux_loss_coef,
                   help="with --train-router: the balance loss weight; None: the model's own (default: %(default)s)")
    p.add_argument("--max-seq-len", type=int, default=train.max_seq_len, help="(default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=train.checkpoint_every,
                   help="optimizer steps between checkpoints; 0: only at the end (default: %(default)s)")
    p.add_argument("--seed", type=int, default=train.seed, help="(default: %(default)s)")
    p.add_argument("--device", default=train.device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default=train.dtype,
                   help="auto: bf16 on CUDA, fp32 on the CPU (default: %(default)s)")
    p.add_argument("--gradient-checkpointing", type=_bool_or_auto, nargs="?", const=True,
                   default=train.gradient_checkpointing,
                   help="activation checkpointing: true (the bare flag), false or auto (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from drlora_core.assets import DEMO_MODEL_ID, demo_train_file, demo_val_file
    from drlora_core.callbacks import Hooks
    from drlora_core.config import ConfigError
    from drlora_core.formats import DatasetError
    from drlora_core.run import train_run

    train_file, val_file = args.train, args.val
    if train_file is None:
        if args.model != DEMO_MODEL_ID:
            print("error: --train is required unless --model is drlora-demo-moe", file=sys.stderr)
            return 2
        train_file, val_file = demo_train_file(), val_file or demo_val_file()
    progress = ProgressBar()
    interrupt = StopOnInterrupt()
    try:
        config = run_config(args, train_file)
        print("settings: " + ", ".join(f"{k}={v}" for k, v in _shown(config).items()))
        with interrupt:
            result = train_run(args.model, train_file, args.out, config, val_file, [progress, Hooks(stop=interrupt.should_stop)],
                               not args.no_resume, args.merged)
    except (ConfigError, DatasetError, OSError) as err:
        progress.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    progress.close()
    if interrupt.requested and result.status == "stopped":
        print(f"\ninterrupted at step {result.step}/{result.total_steps}: checkpoint written under "
              f"{args.out / 'checkpoints'}; run the same command again to resume from it")
        return 130
    print(f"\n{result.status} at step {result.step}/{result.total_steps}; "
          f"{len(result.growth_events)} growth events")
    print(rank_summary(result.ranks, config.lora.ranks[2]))
    if result.adapter_dir is not None:
        print(f"adapter: {result.adapter_dir}")
    if result.merged_dir is not None:
        print(f"merged model: {result.merged_dir}")
    return 0


def run_config(args: argparse.Namespace, train_file: Path | None) -> RunConfig:
    """The flags as a RunConfig, its "auto" values resolved from the model and the training file (without one, as
    `drlora estimate` may run, a batch size must be given: "auto" is a share of the examples)."""
    from drlora_core.assets import resolve_model_dir
    from drlora_core.autoconfig import RunFacts, known_model_facts, resolve
    from drlora_core.config import ConfigError, LoraConfig, TrainConfig

    requested = RunConfig(
        LoraConfig(method=args.method, r_init=args.r_init, r_target=args.r_target, r_max=args.r_max,
                   growth_interval=args.growth_interval, growth_end_ratio=args.growth_end_ratio,
                   saliency_signal=args.saliency_signal, per_slice_adam_steps=args.per_slice_adam_steps,
                   static_profile=args.static_profile),
        TrainConfig(max_steps=args.max_steps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, device=args.device, dtype=args.dtype, max_seq_len=args.max_seq_len,
                    checkpoint_every=args.checkpoint_every, gradient_checkpointing=args.gradient_checkpointing,
                    train_router=args.train_router, router_aux_loss_coef=args.router_aux_loss_coef),
    )
    if train_file is None and args.batch_size == AUTO:
        raise ConfigError("batch_size", "auto is ~0.2% of the training examples: give --train FILE or --batch-size N")
    examples = 1
    if train_file is not None:
        with open(train_file, "rb") as f:
            examples = sum(1 for line in f if line.strip())
    return resolve(requested, RunFacts.of(known_model_facts(resolve_model_dir(args.model)), examples))


def _shown(config: RunConfig) -> dict[str, Any]:
    lora, train = config.lora, config.train
    return {"method": lora.method, "ranks": "/".join(map(str, lora.ranks)), "growth_interval": lora.growth_interval,
            "max_steps": train.max_steps, "epochs": train.epochs, "batch_size": train.batch_size, "lr": f"{train.lr:g}"}


def _int_or_auto(raw: str) -> int | str:
    return AUTO if raw == AUTO else int(raw)


def _float_or_auto(raw: str) -> float | str:
    return AUTO if raw == AUTO else float(raw)


def _bool_or_auto(raw: str) -> bool | str:
    choices: dict[str, bool | str] = {"true": True, "false": False, AUTO: AUTO}
    if raw.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected true, false or auto, got {raw!r}")
    return choices[raw.lower()]


class ProgressBar:
    """A tqdm bar fed by the trainer's callbacks (a `drlora_core.callbacks.TrainingCallback`)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.valid: float | None = None

    def on_start(self, total_steps: int, ranks: list[list[int]], start_step: int) -> None:
        from tqdm import tqdm

        if start_step:
            print(f"resuming from the checkpoint at step {start_step}/{total_steps}")
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def on_step(self, m: StepMetrics) -> None:
        postfix = {"loss": f"{m.train_loss:.3f}", "lr": f"{m.learning_rate:.1e}", "tok/s": f"{m.tokens_per_second:.0f}"}
        if self.valid is not None:
            postfix["val"] = f"{self.valid:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def on_eval(self, step: int, valid_loss: float) -> None:
        self.valid = valid_loss
        if self.bar is not None:
            self.bar.write(f"step {step}: validation loss {valid_loss:.4f}")

    def on_growth(self, events: list[GrowthEvent], stats: ExpertStats) -> None:
        if self.bar is not None:
            self.bar.write(f"step {events[0].step}: grew {len(events)} experts; mean rank per layer "
                           + " ".join(f"{sum(r) / len(r):.1f}" for r in stats.ranks))

    def on_checkpoint(self, step: int, path: Path) -> None:
        if self.bar is not None:
            self.bar.write(f"step {step}: checkpoint {path}")

    def should_stop(self, step: int) -> StopReason | None:
        return None  # the CLI stops on Ctrl-C, not through the trainer

    def on_end(self, step: int, stats: ExpertStats, stopped: StopReason | None) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopOnInterrupt:
    """Ctrl-C asks the trainer to stop after the current step with a checkpoint (the "shutdown" stop reason
    checkpoints whatever --checkpoint-every is), so an interrupted run resumes; a second Ctrl-C ends it at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopOnInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again to quit without one)",
              file=sys.stderr)

    def should_stop(self, step: int) -> StopReason | None:
        return "shutdown" if self.requested else None
