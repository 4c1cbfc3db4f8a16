"""`udaseg run PIPELINE`: YAML pipelines of stage commands, run in order."""
