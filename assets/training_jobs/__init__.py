"""Training jobs: the work of a training asset, run in its own process(es) through Dagster Pipes."""
