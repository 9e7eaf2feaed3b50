"""The source of scriptForReprocessing.py and reprocessing_prep.py: one module per concern.

Users get the generated single files; developers edit these modules and run ``make build``
(tools/build.py), which concatenates them in dependency order.  Imports point down the layers
declared in tools/build.py (command line and plan -> steps -> engines -> pure leaves), never in a
circle, and only as ``from .module import name``: in the generated file every name is a global of
one namespace, so no two modules of a script may define the same name.
"""
