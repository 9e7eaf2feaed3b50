"""Steps: each user action (check, contsub, image, concat, cleanup, weblog, prep) with its run.

Layer 2: a step imports engines and below, never another step (the build refuses it)."""
