"""`make preview`: what training will see, before any training.

Takes `make run`'s first steps (prepare the base model, ingest the new drops), then the
`training_data` job (the base model, `instruction_pairs` and `training_preview`, no training), and prints the first
training examples as the base model's chat template renders them, the tokens that carry loss
marked: highlighted on a terminal, between ⟦ and ⟧ otherwise. The same preview is the
`training_preview` asset's metadata in the Dagster UI.

    make preview                 # the first 3 training examples
    make preview EXAMPLES=10
"""

import argparse
import sys
from datetime import UTC, datetime

import dagster as dg

from assets.domain.preview import (
    LOSS_CLOSE,
    LOSS_OPEN,
    PREVIEW_EXAMPLES,
    PreviewedExample,
    first_training_rows,
    previewed_rows,
)
from pipelines.code_location import CodeLocationError, code_location_runs
from pipelines.definitions import training_data_job
from pipelines.run import WORKSPACE_FILE, LaunchedPipeline, output_to_log
from pipelines.settings import Settings

HIGHLIGHT, RESET = "\033[1;32m", "\033[0m"


def shown(example: PreviewedExample, colour: bool) -> str:
    marks = (HIGHLIGHT, RESET) if colour else (LOSS_OPEN, LOSS_CLOSE)
    return (
        f"--- {example.source}: {example.tokens} tokens, {example.loss_tokens} carry loss\n{example.marked(*marks)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=PREVIEW_EXAMPLES, help="how many training examples to show")
    args = parser.parse_args(argv)
    settings = Settings.from_env().prepare()
    log_path = settings.home / "logs" / f"make-preview-{datetime.now(UTC):%Y%m%d-%H%M%S}.log"
    colour = sys.stdout.isatty()
    with output_to_log(log_path) as terminal:
        terminal.say(f"Preset '{settings.preset}'; landing {settings.landing_dir}; state in {settings.home}")
        instance = dg.DagsterInstance.get()
        try:
            with code_location_runs(instance, WORKSPACE_FILE) as runs:
                pipeline = LaunchedPipeline(settings, instance, runs, terminal)
                run, _, problems = pipeline(training_data_job.name)
        except CodeLocationError as err:
            terminal.say(str(err))
            return 1
        if run is None or run.status != dg.DagsterRunStatus.SUCCESS:
            terminal.say("\n".join(["\nNo training examples to preview:", *problems]))
            return 1
        if args.examples == PREVIEW_EXAMPLES:
            preview = pipeline.value("training_preview").examples
        else:  # more than the asset keeps: rendered here the same way
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(pipeline.value("base_model"))
            pairs = pipeline.value("instruction_pairs")
            preview = previewed_rows(
                tokenizer, first_training_rows((r for b in pairs.batches() for r in b), args.examples)
            )
        where = "highlighted" if colour else f"between {LOSS_OPEN} and {LOSS_CLOSE}"
        terminal.say(f"\nThe first training examples as the model sees them; the tokens that carry loss {where}:\n")
        for example in preview:
            terminal.say(shown(example, colour))
    return 0


if __name__ == "__main__":
    sys.exit(main())
