"""Prefect glue: one flow per stage (python -m flows.<stage>), the pipeline flow and the run's server."""
import os

# The process that started this one, read before any slow import (prefect and torch take seconds): a
# `dvc repro` that dies meanwhile would leave getppid() the reaper's, and the stage bound to it.
STARTED_BY = os.getppid()
