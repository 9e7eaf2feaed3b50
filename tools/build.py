#!/usr/bin/env python3
"""Build the two user scripts from the package: one generated file each, SQLite-amalgamation style.

    python3 tools/build.py            # write scriptForReprocessing.py and reprocessing_prep.py
    python3 tools/build.py --check    # exit 1 (and say which) if a committed script is not what the build makes
    python3 tools/build.py --graph    # the package's import graph, in Graphviz dot, layers as ranks

Users get ONE file they copy into calibrated_final/; developers edit the modules of ``reprocessing/``.
For each script the build takes its entry module and every module it imports (transitively), and
writes them into one file in dependency order: the user-editable defaults block first, the standard
library imports hoisted and merged, each module's body after a one-line banner, intra-package
imports removed (in the flat file every name is a global of the one namespace).

What the build refuses, so that the flat file means what the package means:
* an intra-package import that is not ``from .module import name, ...`` at a module's top level;
* an import cycle, and an import that points up the layers below (a step importing the plan, ...);
* a top-level name defined by two modules of one script, or one that shadows a hoisted import;
* a name imported from a module that does not define it;
* a top-level import of anything but the standard library (CASA and the pipeline are imported
  lazily, inside functions: ``--help`` must work without them).
"""
import argparse
import ast
import collections
import difflib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / 'reprocessing'
OUTPUTS = collections.OrderedDict([
    ('scriptForReprocessing.py', 'cli'),
    ('reprocessing_prep.py', 'prep'),
])
DEFAULTS_MODULE = 'defaults'   # the user-editable block: first in the generated file, plain assignments only

# Imports may only point to the same layer or lower ones (and never in a circle).
LAYERS = collections.OrderedDict([
    ('top: command line and plan', ['cli', 'plan', 'prep']),
    ('steps', ['prep_build', 'check_step', 'contsub_fast', 'uvcont_tables', 'contsub_pipeline', 'spectra', 'image_step',
               'image_pipeline', 'image_publish', 'image_update', 'archive_compare', 'concat', 'cleanup', 'weblog', 'report']),
    ('engines', ['image_stats', 'environment', 'workers', 'mpi', 'eb_tasks', 'pipeline_engine', 'image_casa', 'thumbnails',
                 'contdat_check', 'channels', 'data_columns', 'ms_tables', 'run_state', 'staging', 'line_provenance',
                 'tclean_progress', 'casa_engine']),
    ('pure leaves', ['defaults', 'command_line', 'prep_plan', 'layout', 'contdat', 'products', 'heuristics', 'imaging_options',
                     'pipeline_calls', 'provenance', 'fileops', 'host', 'messages']),
])


class BuildError(Exception):
    pass


Module = collections.namedtuple('Module', 'name path docstring body_lines imports stdlib defined')


def layer_of(name):
    for rank, (_title, names) in enumerate(LAYERS.items()):
        if name in names:
            return rank
    raise BuildError('reprocessing/%s.py is in no layer — add it to LAYERS in tools/build.py' % name)


def read_module(name):
    path = PACKAGE / (name + '.py')
    if not path.is_file():
        raise BuildError('reprocessing/%s.py does not exist (imported by the package)' % name)
    text = path.read_text(encoding='utf-8')
    tree = ast.parse(text, filename=str(path))
    lines = text.splitlines()
    docstring = ast.get_docstring(tree, clean=False)
    if not docstring:
        raise BuildError('%s has no docstring — say in its first lines what the module owns' % path.name)
    skip = set()          # 1-based line numbers left out of the body: docstring and imports
    first = tree.body[0]
    skip.update(range(first.lineno, first.end_lineno + 1))
    imports = collections.OrderedDict()   # module -> [names]
    stdlib = []           # ('import', name, asname) or ('from', module, name, asname)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1 or not node.module or '.' in node.module:
                raise BuildError('%s:%d: write intra-package imports as "from .module import name"'
                                 % (path.name, node.lineno))
            imports.setdefault(node.module, []).extend(alias.name for alias in node.names)
            if any(alias.asname for alias in node.names):
                raise BuildError('%s:%d: no "as" in intra-package imports: the flat file has one namespace'
                                 % (path.name, node.lineno))
            skip.update(range(node.lineno, node.end_lineno + 1))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                _require_stdlib(alias.name, path, node)
                stdlib.append(('import', alias.name, alias.asname))
            skip.update(range(node.lineno, node.end_lineno + 1))
        elif isinstance(node, ast.ImportFrom):
            _require_stdlib(node.module, path, node)
            for alias in node.names:
                stdlib.append(('from', node.module, alias.name, alias.asname))
            skip.update(range(node.lineno, node.end_lineno + 1))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and node not in tree.body:
            raise BuildError('%s:%d: intra-package imports belong at the top of the module' % (path.name, node.lineno))
        if isinstance(node, ast.Import) and any(a.name.split('.')[0] == 'reprocessing' for a in node.names):
            raise BuildError('%s:%d: import package modules with "from .module import name"'
                             % (path.name, node.lineno))
    body = [line for number, line in enumerate(lines, 1) if number not in skip]
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    return Module(name, path, docstring, body, imports, stdlib, top_level_names(tree))


def _require_stdlib(name, path, node):
    top = name.split('.')[0]
    if top not in sys.stdlib_module_names and top != '__future__':
        raise BuildError('%s:%d: "%s" is imported at the top level, but only the standard library may be — '
                         'import it inside the function that needs it' % (path.name, node.lineno, name))


def top_level_names(tree):
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names.append(sub.id)
    return names


def modules_of(entry):
    """The entry module and everything it imports, dependencies first (a stable depth-first order)."""
    loaded, order, visiting = {}, [], []

    def visit(name):
        if name in order:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            raise BuildError('import cycle: %s — move the shared piece down a layer' % ' -> '.join(cycle))
        visiting.append(name)
        module = loaded.get(name) or read_module(name)
        loaded[name] = module
        for dependency in module.imports:
            if layer_of(dependency) < layer_of(name):
                raise BuildError('reprocessing/%s.py (%s) imports %s (%s): imports must point down the layers'
                                 % (name, _layer_title(name), dependency, _layer_title(dependency)))
            visit(dependency)
        visiting.pop()
        order.append(name)

    visit(entry)
    return [loaded[name] for name in order]


def _layer_title(name):
    return list(LAYERS)[layer_of(name)]


def check_names(modules):
    owner = {}
    for module in modules:
        for name in module.defined:
            if name in owner and owner[name] != module.name:
                raise BuildError('"%s" is defined in both reprocessing/%s.py and reprocessing/%s.py — the '
                                 'generated script has one namespace: rename one' % (name, owner[name], module.name))
            owner[name] = module.name
    for module in modules:
        for source, names in module.imports.items():
            for name in names:
                if owner.get(name) != source:
                    raise BuildError('reprocessing/%s.py imports %s from .%s, which does not define it%s'
                                     % (module.name, name, source,
                                        ' (reprocessing/%s.py does)' % owner[name] if name in owner else ''))
    for module in modules:
        for entry in module.stdlib:
            bound = (entry[2] or entry[1].split('.')[0]) if entry[0] == 'import' else (entry[3] or entry[2])
            if bound in owner:
                raise BuildError('"%s" is imported by reprocessing/%s.py and defined in reprocessing/%s.py — '
                                 'rename the definition' % (bound, module.name, owner[bound]))


def hoisted_imports(modules):
    plain, froms = set(), collections.OrderedDict()
    for module in modules:
        for entry in module.stdlib:
            if entry[0] == 'import':
                plain.add((entry[1], entry[2]))
            else:
                froms.setdefault(entry[1], set()).add((entry[2], entry[3]))
    lines = ['import %s%s' % (name, ' as %s' % asname if asname else '') for name, asname in sorted(plain)]
    for source in sorted(froms):
        names = ', '.join('%s%s' % (name, ' as %s' % asname if asname else '') for name, asname in sorted(froms[source]))
        lines.append('from %s import %s' % (source, names))
    return lines


def generate(output, entry):
    modules = modules_of(entry)
    check_names(modules)
    entry_module = modules[-1]
    defaults = [m for m in modules if m.name == DEFAULTS_MODULE]
    others = [m for m in modules if m.name != DEFAULTS_MODULE]
    for module in defaults:
        _check_defaults_block(module)
    listing = ', '.join(m.name for m in modules)
    header = ['#!/usr/bin/env python3',
              # Python 2 reads the whole file before it runs a line: with this, it gets past the
              # non-ASCII characters and stops at the guard below, printing that line (the message)
              '# -*- coding: utf-8 -*-',
              '# GENERATED by tools/build.py from the package reprocessing/ — do not edit this file by hand',
              '# (except the user-editable defaults block below): edit the modules and run "make build".']
    header.extend(_wrap('# Modules, in order: ' + listing, 110, '#   '))
    text = header + ['"""' + entry_module.docstring + '"""', '', python2_guard(output), '']
    for module in defaults:
        text.extend(module.body_lines + [''])
    text.extend(hoisted_imports(modules))
    for module in others:
        summary = module.docstring.strip().splitlines()[0]
        text.extend(['', '', '# ' + '=' * 98, '# reprocessing/%s.py: %s' % (module.name, summary), '# ' + '=' * 98,
                     ''])
        text.extend(module.body_lines)
    return '\n'.join(text) + '\n'


def python2_guard(output):
    """A line Python 3 ignores and Python 2 cannot parse: its SyntaxError shows the line, which says what to do.

    (CASA 5 is Python 2.7: without it the first thing its users saw was "SyntaxError: Non-ASCII
    character '\\xe2'".)  The lambda is never called; in Python 2 print is a statement, not a value.
    """
    return ('_NEEDS_PYTHON_3 = lambda: print("ERROR: %s needs CASA 6 (Python 3.6 or later), this is Python 2 '
            '(CASA 5) - run it with CASA 6: casa -c %s, or python3 %s")' % (output, output, output))


def _check_defaults_block(module):
    tree = ast.parse(module.path.read_text(encoding='utf-8'))
    for node in tree.body[1:]:
        if not isinstance(node, ast.Assign):
            raise BuildError('reprocessing/%s.py:%d: the defaults block holds plain assignments only (users edit '
                             'it at the top of the script)' % (module.name, node.lineno))


def _wrap(text, width, indent):
    lines, current = [], ''
    for word in text.split(' '):
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = indent + word
        else:
            current = current + ' ' + word if current else word
    return lines + [current]


def graph():
    edges, layers = [], collections.defaultdict(list)
    for path in sorted(PACKAGE.glob('*.py')):
        if path.name == '__init__.py':
            continue
        module = read_module(path.stem)
        layers[layer_of(module.name)].append(module.name)
        edges.extend((module.name, dependency) for dependency in module.imports)
    out = ['digraph reprocessing {', '  rankdir=TB; node [shape=box, fontname="sans-serif"];']
    for rank, names in sorted(layers.items()):
        out.append('  { rank=same; %s }  // %s' % ('; '.join('"%s"' % n for n in sorted(names)), list(LAYERS)[rank]))
    out.extend('  "%s" -> "%s";' % edge for edge in edges)
    return '\n'.join(out + ['}'])


def main(args=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='only compare the committed scripts with the build')
    parser.add_argument('--graph', action='store_true', help='print the import graph (Graphviz dot)')
    options = parser.parse_args(args)
    try:
        if options.graph:
            print(graph())
            return 0
        stale = []
        for output, entry in OUTPUTS.items():
            text = generate(output, entry)
            target = REPO / output
            current = target.read_text(encoding='utf-8') if target.is_file() else ''
            if current == text:
                continue
            if options.check:
                stale.append(output)
                diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), 'committed/' + output,
                                                 'built/' + output, lineterm='', n=1))
                print('\n'.join(diff[:40]))
            else:
                target.write_text(text, encoding='utf-8')
                target.chmod(0o755)
                print('wrote %s' % output)
    except BuildError as error:
        print('ERROR: %s' % error, file=sys.stderr)
        return 1
    if stale:
        print('ERROR: %s differ%s from what the package builds — run "make build" and commit the result'
              % (' and '.join(stale), 's' if len(stale) == 1 else ''), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
