"""Entry points: the two scripts' main() (reprocess: scriptForReprocessing.py, prep: reprocessing_prep.py), their parsers and the one error policy.

Layer 0 (top): may import every layer below."""
