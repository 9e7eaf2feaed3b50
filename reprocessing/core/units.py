"""Physical constants the layers share (one definition: pipeline_calls, spectral_grid, moments and the
imaging heuristics each had their own)."""

SPEED_OF_LIGHT = 299792458.0  # m/s
SPEED_OF_LIGHT_KMS = SPEED_OF_LIGHT / 1000.0
