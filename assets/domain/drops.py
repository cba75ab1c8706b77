"""Data drops as Dagster partitions: each file or dated sub-folder of the landing location is one.

Shared, not an asset: the partitioned data assets, the landing sensor and `make run`
share this definition. Drops are added by the sensor (or `make run`) as they are found.
"""

import dagster as dg

DROPS = dg.DynamicPartitionsDefinition(name="drops")


def by_drop(loaded) -> dict:
    """A partitioned input as drop -> value. The IO manager hands over a dict of partitions, or the
    bare value when exactly one partition exists; missing partitions (held-back drops) come as None."""
    if isinstance(loaded, dict):
        return loaded
    if loaded is None:
        return {}
    return {loaded.partition: loaded}
