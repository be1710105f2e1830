"""The data layer: sources and their sizes, memory-mapped tables, webdataset shard streams, the per-epoch plans
that say which reader trains which sample, and the datasets and collators the trainers read."""
