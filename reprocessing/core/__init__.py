"""Leaves: messages and errors, file operations, the delivery's layout and names, the user-editable defaults.

Layer 5 (bottom): imports nothing of the package outside core."""
