import dagster as dg

# One partition per configured source (train and benchmark); added by the source sensor.
source_partitions = dg.DynamicPartitionsDefinition(name="source")
