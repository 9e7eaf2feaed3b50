"""The reprocessing report: a static HTML page per run.

Layer 3 (engines, beside imaging, contsub and contdat)."""
