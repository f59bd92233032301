"""The ``longvila`` console script.

    longvila pipeline --output_dir runs/tiny [stage flags...]   # s1 -> s5, each from the previous output
    longvila train s4_context_ext --output_dir runs/s4 [...]    # one stage (same as python -m longvila.stages.X)
    longvila stages                                             # list the stages and what they train
    longvila vniah --model DIR --output_dir DIR [...]           # V-NIAH heatmap (longvila.eval.vniah)
    longvila passkey --model DIR --output_dir DIR [...]         # passkey retrieval heatmap (longvila.eval.passkey)
    longvila chat --model DIR [--image F | --video F] "question" # one greedy answer (longvila.chat)
    longvila plan --model qwen2-7b --model_max_length 1048576 --gpus 8  # layout, memory, time (longvila.plan)
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Optional

from longvila.errors import ConfigError
from longvila.stages import STAGES, stage_spec

START_FLAGS = ("--model_name_or_path", "--vision_tower", "--mm_projector", "--mm_vision_select_layer",
               "--mm_vision_select_feature", "--chat_template", "--mm_projector_token_order")
"""Flags that say what the first stage starts from; later stages start from the previous stage's output."""


def without_flags(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` minus ``--name value`` / ``--name=value`` for each of ``names``."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in names:
            skip = True
        elif not token.split("=", 1)[0] in names:
            out.append(token)
    return out


DATA_FLAGS = ("--data_path", "--data_mixture", "--media_root")
"""Flags that name a stage's data: the stages read different kinds (captions, QA, long text, videos), so in a
pipeline each value names its stage (``--data_path s1=captions.json,s4=long.jsonl``)."""
STAGE_ALIASES = {name.split("_", 1)[0]: name for name in STAGES}  # s1 -> s1_align


def flag_values(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` in ``argv`` (``--flag value`` or ``--flag=value``)."""
    values = []
    for index, token in enumerate(argv):
        if token == flag and index + 1 < len(argv):
            values.append(argv[index + 1])
        elif token.startswith(flag + "="):
            values.append(token[len(flag) + 1:])
    return values


def split_per_stage(flag: str, value: str, stages: tuple[str, ...]) -> dict[str, str]:
    """``s1=a.json,s3_sft=b.json,c.json`` -> {s1_align: a.json, s3_sft: b.json,c.json} (an unkeyed item joins the
    comma list of the stage before it). A value without stage keys is taken only by a one-stage pipeline."""
    per_stage: dict[str, str] = {}
    current = None
    for item in value.split(","):
        key, keyed, rest = item.partition("=")
        name = STAGE_ALIASES.get(key, key) if keyed else None
        if name in STAGES:
            if name not in stages:
                raise ConfigError(f"{flag}: {key}= names a stage this pipeline does not run ({', '.join(stages)})")
            if name in per_stage:
                raise ConfigError(f"{flag}: {name} is given twice")
            current, per_stage[name] = name, rest
        elif current is not None:
            per_stage[current] += "," + item
        elif len(stages) == 1:
            return {stages[0]: value}
        else:
            raise ConfigError(f"{flag} {value}: the stages read different data, so name the stage of each file, "
                              f"e.g. {flag} s1=captions.json,s4=long_text.jsonl (a stage without one trains on "
                              "the embedded synthetic data)")
    return per_stage


def stage_data_flags(extra: list[str], stages: tuple[str, ...]) -> dict[str, list[str]]:
    """Each stage's own data flags, decided before stage 1 runs so a bad value costs nothing."""
    flags: dict[str, list[str]] = {name: [] for name in stages}
    for flag in DATA_FLAGS:
        values = flag_values(extra, flag)
        if len(values) > 1:
            raise ConfigError(f"{flag} is given {len(values)} times; give it once, per stage: "
                              f"{flag} s1=a.json,s3=b.json")
        for name, value in (split_per_stage(flag, values[0], stages) if values else {}).items():
            flags[name] += [flag, value]
    return flags


def run_pipeline(output_dir: Path, extra: list[str], stages: tuple[str, ...] = STAGES,
                 init_from: Optional[str] = None) -> list[dict]:
    """Run the stages in order, each starting from the previous stage's saved checkpoint.

    The first stage may start from pretrained parts (``--model_name_or_path`` ...); those flags go to it alone.
    Data flags go to the stage they name (``stage_data_flags``). An error a stage raises names the stage.
    """
    from longvila.console import user_error_types
    from longvila.stages.common import run_stage

    data = stage_data_flags(extra, stages)
    shared = without_flags(extra, DATA_FLAGS)
    summary, previous = [], init_from
    for name in stages:
        stage_extra = shared if name == stages[0] else without_flags(shared, START_FLAGS)
        argv = ["--output_dir", str(output_dir / name), *stage_extra, *data[name]]
        if previous:
            argv += ["--init_from", previous]
        started = time.perf_counter()
        try:
            run = run_stage(stage_spec(name), argv)
        except user_error_types() as error:
            error.args = (f"stage {name}: {error}",)
            raise
        losses = [record["loss"] for record in run.history]
        summary.append({
            "stage": name, "steps": len(losses), "first_loss": losses[0] if losses else float("nan"),
            "last_loss": losses[-1] if losses else float("nan"), "seconds": time.perf_counter() - started,
        })
        previous = str(output_dir / name)
    return summary


def format_summary(summary: list[dict]) -> str:
    lines = [f"{'stage':<20}{'steps':>6}{'first loss':>12}{'last loss':>12}{'seconds':>9}"]
    for row in summary:
        lines.append(f"{row['stage']:<20}{row['steps']:>6}{row['first_loss']:>12.4f}{row['last_loss']:>12.4f}"
                     f"{row['seconds']:>9.1f}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="longvila", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pipe = commands.add_parser("pipeline", help="run s1 -> s5 on the embedded default (or --init_from)")
    pipe.add_argument("--output_dir", required=True, type=Path)
    pipe.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, in order")
    pipe.add_argument("--init_from", default=None, help="checkpoint the first stage starts from")
    train = commands.add_parser("train", help="run one stage", add_help=False)
    train.add_argument("stage", choices=STAGES)
    commands.add_parser("stages", help="list the stages")
    commands.add_parser("vniah", help="visual needle-in-a-haystack evaluation", add_help=False)
    commands.add_parser("passkey", help="passkey retrieval evaluation", add_help=False)
    commands.add_parser("chat", help="answer one question (text, --image or --video) from a checkpoint",
                        add_help=False)
    commands.add_parser("plan", help="predict memory and step time, pick the layout, print the command",
                        add_help=False)
    args, rest = parser.parse_known_args(argv)

    if args.command == "plan":
        from longvila.plan.cli import main as plan_main

        plan_main(rest)
        return
    if args.command in ("vniah", "passkey", "chat"):
        module = "longvila.chat" if args.command == "chat" else f"longvila.eval.{args.command}"
        importlib.import_module(module).main(rest)
        return
    from longvila.console import run_console

    run_console("longvila", lambda _: _run_command(args, rest), [])


def _run_command(args, rest: list[str]) -> None:
    """``stages``, ``train`` and ``pipeline`` (the other commands hand over to their own modules)."""
    if args.command == "stages":
        for name in STAGES:
            spec = stage_spec(name)
            print(f"{name:<20} trains {', '.join(sorted(spec.trains)):<36} {spec.summary}")
    elif args.command == "train":
        from longvila.stages.common import main as stage_main

        stage_main(stage_spec(args.stage), rest)
    else:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        for name in stages:
            stage_spec(name)
        summary = run_pipeline(args.output_dir, rest, stages, args.init_from)
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_rank() == 0:
            print(format_summary(summary))


if __name__ == "__main__":
    main()
