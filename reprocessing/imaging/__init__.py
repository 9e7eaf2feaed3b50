"""Imaging engines: tclean (pipeline-free) and the pipeline's imaging, publishing, image records, pictures.

Layer 3 (engines, beside contsub, contdat and report)."""
