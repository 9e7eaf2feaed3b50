"""The only door to CASA and the pipeline: loader, tasks, every MS read, the pipeline adapter, workers, MPI.

Layer 4 (beside run): imports core only."""
