"""Continuum-subtraction engines: uvcontsub and the delivered tables, line-MS records, before/after spectra.

Layer 3 (engines, beside imaging, contdat and report)."""
