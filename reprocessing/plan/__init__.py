"""The plan: the command line parsed and validated once into requests, every check made before the first long step.

Layer 1: imports steps and below, never apps."""
