"""What a running training reports as it goes: metrics to its MLflow run (so the curves grow in the
MLflow UI while it trains) and a progress line (`train step N/M, loss, ETA`) to the Dagster log.

    callback = live_tracking(run, context.log.info, max_steps=50, prefix="train")
    trainer = SFTTrainer(..., callbacks=[callback])

The callback class is built on first use so that importing this module does not import transformers.
"""

import time
from collections.abc import Callable

# Trainer log keys -> the metric names they are tracked under (after the prefix).
TRACKED = {"loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm"}
# The loss on SFT's validation slice, at each validation (training.sft.eval_steps).
VALIDATION_LOSS = "validation.loss"


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(prefix: str, step: int, max_steps: int, loss: float | None, eta: float | None) -> str:
    """'train step 10/50 (20%), loss 0.7251, ETA 2m05s'."""
    shown = f", loss {loss:.4f}" if loss is not None else ""
    return f"{prefix} step {step}/{max_steps} ({100 * step // max(max_steps, 1)}%){shown}, ETA {eta_text(eta)}"


def validation_line(step: int, max_steps: int, loss: float, best: float | None) -> str:
    """'validation at step 20/50: loss 0.8123 (best so far 0.7990)'. `best`: the best before this one."""
    shown = "" if best is None else f" (best so far {best:.4f})" if best <= loss else " (best so far)"
    return f"validation at step {step}/{max_steps}: loss {loss:.4f}{shown}"


class Progress:
    """Steps per second and tokens per second since training (or its resumption) began."""

    def __init__(self, start_step: int, clock: Callable[[], float] = time.time):
        self.clock, self.start_step, self.started = clock, start_step, clock()
        self.last_time, self.last_tokens = self.started, None

    def eta(self, step: int, max_steps: int) -> float | None:
        done = step - self.start_step
        if done <= 0:
            return None
        return (self.clock() - self.started) / done * (max_steps - step)

    def tokens_per_second(self, tokens_seen: float | None) -> float | None:
        """Non-pad tokens per second over the last logging interval (TRL's `num_tokens` counts them)."""
        now = self.clock()
        rate = None
        if tokens_seen is not None and self.last_tokens is not None and now > self.last_time:
            rate = (tokens_seen - self.last_tokens) / (now - self.last_time)
        self.last_time, self.last_tokens = now, tokens_seen
        return rate


def live_tracking(
    run, say: Callable[[str], None], max_steps: int, prefix: str = "train", tracked: dict[str, str] = TRACKED
):
    """A transformers TrainerCallback sending each log to `run` (a TrackedRun, or None) as
    `<prefix>.<metric>` at its step (the trainer's log keys in `tracked`, plus tokens/s), and a
    progress line to `say`; and each validation's loss (SFT's validation slice) as `validation.loss`, with
    a line. Each recipe names the keys its trainer logs (DPO's reward accuracy, GRPO's reward)."""
    from transformers import TrainerCallback

    class LiveTracking(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            step = state.global_step
            metrics = {f"{prefix}.{name}": float(logs[key]) for key, name in tracked.items() if key in logs}
            rate = self.progress.tokens_per_second(logs.get("num_tokens"))
            if rate is not None:
                metrics[f"{prefix}.tokens_per_second"] = rate
            if run is not None:
                run.log_metrics(metrics, step=step)
            line = progress_line(prefix, step, max_steps, logs.get("loss"), self.progress.eta(step, max_steps))
            say(line + (f", reward {logs['reward']:.3f}" if "reward" in logs else ""))  # GRPO's

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not metrics or "eval_loss" not in metrics:
                return
            step, loss = state.global_step, float(metrics["eval_loss"])
            if run is not None:
                run.log_metrics({VALIDATION_LOSS: loss}, step=step)
            say(validation_line(step, max_steps, loss, state.best_metric))

    return LiveTracking()
