"""cont.dat: its grammar (pure), its ranges as channels, and its check against the measurement sets.

Layer 3 (engines, beside imaging, contsub and report)."""
