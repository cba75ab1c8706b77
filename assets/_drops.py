"""Data drops as Dagster partitions: each file or dated sub-folder of the landing location is one.

Not an asset (hence the underscore): the partitioned data assets, the landing sensor and `make run`
share this definition. Drops are added by the sensor (or `make run`) as they are found.
"""

import dagster as dg

DROPS = dg.DynamicPartitionsDefinition(name="drops")
