"""The source of scriptForReprocessing.py and reprocessing_prep.py: one folder per layer, one module per concern.

Users get the generated single files; developers edit these modules and run ``make build``
(tools/build.py), which concatenates them in dependency order.  The folders are the layers, top
first: apps > plan > steps > engines (imaging, contsub, contdat, report) > doors (casa, run) > core;
each folder's __init__.py says what it holds.  Imports point down the layers, never in a circle,
never from one step into another, and only as ``from .module import name`` (same folder) or
``from ..folder.module import name``: in the generated file every name is a global of one namespace,
so no two modules of a script may define the same name.  ``python -m reprocessing`` runs the package
as itself, exactly as the generated script.
"""
