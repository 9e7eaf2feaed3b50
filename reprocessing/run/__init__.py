"""One run's state on disk: the lock, the journal, publishing, shadows of the user's MSes, provenance records.

Layer 4 (beside casa): imports core only."""
