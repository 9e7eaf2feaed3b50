#!/usr/bin/env python3
"""Build the two user scripts from the package: one generated file each, SQLite-amalgamation style.

    python3 tools/build.py            # write scriptForReprocessing.py and reprocessing_prep.py
    python3 tools/build.py --check    # exit 1 (and say which) if a committed script is not what the build makes
    python3 tools/build.py --graph    # the package's import graph, in Graphviz dot, layers as ranks
    python3 tools/build.py --where N  # the module line behind line N of scriptForReprocessing.py
    python3 tools/build.py --commit   # the commit the committed script was built from

Users get ONE file they copy into calibrated_final/; developers edit the modules of ``reprocessing/``.
For each script the build takes its entry module and every module it imports (transitively), and
writes them into one file in dependency order: the user-editable defaults block first, the standard
library imports hoisted and merged, each module's body after a banner naming its source file and first
line, intra-package imports removed (in the flat file every name is a global of the one namespace).
The header names the git tree of reprocessing/ it was built from.

The package's folders are its layers (LAYERS, top first: apps > plan > steps > engines > casa/run > core).
What the build refuses, so that the flat file means what the package means and the layers hold:
* an intra-package import that is not ``from .module import name`` (same folder) or
  ``from ..folder.module import name``, at a module's top level;
* an import cycle, an import that points up the layers, and a step importing another step;
* globals() (the flat script's namespace is not the package's) and getattr(options, ...) (the command
  line reaches steps and engines as requests, not as the argparse Namespace);
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
    ('scriptForReprocessing.py', 'apps/reprocess'),
    ('reprocessing_prep.py', 'apps/prep'),
])
DEFAULTS_MODULE = 'core/defaults'   # the user-editable block: first in the generated file, plain assignments only

# The layers are the package's folders, top first; folders of one rank may import each other (never in a
# circle), a module imports only its own rank or lower ones, and a step never imports another step.  What
# each folder holds is the docstring of its __init__.py.
LAYERS = (('apps',), ('plan',), ('steps',), ('imaging', 'contsub', 'contdat', 'report'), ('casa', 'run'), ('core',))
STEPS_FOLDER = 'steps'
NOT_BUILT = ('__init__.py', '__main__.py')   # the package's own entry (python -m reprocessing) is not in the scripts


class BuildError(Exception):
    pass


# name: 'folder/module'; body: [(source line number, text)] without the docstring and the imports
Module = collections.namedtuple('Module', 'name path docstring body imports stdlib defined')


def layer_of(name):
    folder = name.split('/')[0]
    for rank, folders in enumerate(LAYERS):
        if folder in folders:
            return rank
    raise BuildError('reprocessing/%s.py is in the folder %s/, which is no layer — move it into one of %s, or add '
                     'the folder to LAYERS in tools/build.py' % (name, folder, ', '.join(f for r in LAYERS for f in r)))


def package_modules():
    """Every module of the package as 'folder/module', the package's own entry files left out."""
    names = []
    for path in sorted(PACKAGE.rglob('*.py')):
        relative = path.relative_to(PACKAGE)
        if path.name in NOT_BUILT or '__pycache__' in relative.parts:
            continue
        if len(relative.parts) != 2:
            raise BuildError('reprocessing/%s: modules live one folder deep (reprocessing/<layer>/<module>.py)'
                             % relative.as_posix())
        names.append(relative.with_suffix('').as_posix())
    return names


def imported_module(importer, node, path):
    """The 'folder/module' an intra-package "from .x import" or "from ..folder.x import" names."""
    folder = importer.split('/')[0]
    parts = (node.module or '').split('.')
    if node.level == 1 and len(parts) == 1 and parts[0]:
        return '%s/%s' % (folder, parts[0])
    if node.level == 2 and len(parts) == 2:
        return '%s/%s' % tuple(parts)
    raise BuildError('%s:%d: write intra-package imports as "from .module import name" (same folder) or '
                     '"from ..folder.module import name"' % (_shown(path), node.lineno))


def _shown(path):
    return 'reprocessing/' + path.relative_to(PACKAGE).as_posix()


def read_module(name):
    path = PACKAGE / (name + '.py')
    if not path.is_file():
        raise BuildError('reprocessing/%s.py does not exist (imported by the package)' % name)
    text = path.read_text(encoding='utf-8')
    tree = ast.parse(text, filename=str(path))
    lines = text.splitlines()
    docstring = ast.get_docstring(tree, clean=False)
    if not docstring:
        raise BuildError('%s has no docstring — say in its first lines what the module owns' % _shown(path))
    skip = set()          # 1-based line numbers left out of the body: docstring and imports
    first = tree.body[0]
    skip.update(range(first.lineno, first.end_lineno + 1))
    imports = collections.OrderedDict()   # module -> [names]
    stdlib = []           # ('import', name, asname) or ('from', module, name, asname)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            source = imported_module(name, node, path)
            imports.setdefault(source, []).extend(alias.name for alias in node.names)
            if any(alias.asname for alias in node.names):
                raise BuildError('%s:%d: no "as" in intra-package imports: the flat file has one namespace'
                                 % (_shown(path), node.lineno))
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
            raise BuildError('%s:%d: intra-package imports belong at the top of the module' % (_shown(path), node.lineno))
        if isinstance(node, ast.Import) and any(a.name.split('.')[0] == 'reprocessing' for a in node.names):
            raise BuildError('%s:%d: import package modules with "from .module import name"'
                             % (_shown(path), node.lineno))
        _refuse_namespace_lookups(node, path)
    body = [(number, line) for number, line in enumerate(lines, 1) if number not in skip]
    while body and not body[0][1].strip():
        body.pop(0)
    while body and not body[-1][1].strip():
        body.pop()
    return Module(name, path, docstring, body, imports, stdlib, top_level_names(tree))


def _refuse_namespace_lookups(node, path):
    """globals() lookups mean one thing in the flat script and another in the package; and the argparse
    Namespace stays in the plan layer, which turns it into requests: no getattr(options, ...) anywhere."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return
    if node.func.id == 'globals':
        raise BuildError('%s:%d: globals() reads the flat script\'s namespace, which the package does not have — '
                         'import the name, or pass it' % (_shown(path), node.lineno))
    if node.func.id == 'getattr' and node.args and isinstance(node.args[0], ast.Name) \
            and node.args[0].id == 'options':
        raise BuildError('%s:%d: getattr(options, ...) — read the command line once, in the plan\'s requests, '
                         'and pass the request' % (_shown(path), node.lineno))


def _require_stdlib(name, path, node):
    top = name.split('.')[0]
    if top not in sys.stdlib_module_names and top != '__future__':
        raise BuildError('%s:%d: "%s" is imported at the top level, but only the standard library may be — '
                         'import it inside the function that needs it' % (_shown(path), node.lineno, name))


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
            check_import(name, dependency)
            visit(dependency)
        visiting.pop()
        order.append(name)

    visit(entry)
    return [loaded[name] for name in order]


def check_import(name, dependency):
    if layer_of(dependency) < layer_of(name):
        raise BuildError('reprocessing/%s.py (layer %d) imports %s (layer %d): imports must point down the layers '
                         '(%s)' % (name, layer_of(name), dependency, layer_of(dependency), _layers_text()))
    if name.split('/')[0] == dependency.split('/')[0] == STEPS_FOLDER:
        raise BuildError('reprocessing/%s.py imports reprocessing/%s.py: a step never imports another step — move '
                         'what they share down into an engine or core' % (name, dependency))


def _layers_text():
    return ' > '.join('/'.join(folders) for folders in LAYERS)


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
                    raise BuildError('reprocessing/%s.py imports %s from %s, which does not define it%s'
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
    """The script's text and its line map: for each line of the text, (source path, line) or None."""
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
              '# (except the user-editable defaults block below): edit the modules and run "make build".',
              '# Built from the package tree %s (git rev-parse COMMIT:reprocessing); "python3 tools/build.py'
              % package_tree_id(),
              '# --commit" names the commit, "python3 tools/build.py --where LINE" the module line of a script line.']
    header.extend(_wrap('# Modules, in order: ' + listing, 110, '#   '))
    opening = header + ('"""' + entry_module.docstring + '"""').splitlines() + ['', python2_guard(output), '']
    lines = [(line, None) for line in opening]
    for module in defaults:
        lines.extend((text, (module.name, number)) for number, text in module.body)
        lines.append(('', None))
    lines.extend((line, None) for line in hoisted_imports(modules))
    for module in others:
        summary = module.docstring.strip().splitlines()[0]
        first = module.body[0][0] if module.body else 1
        lines.extend([('', None), ('', None), ('# ' + '=' * 98, None),
                      ('# reprocessing/%s.py:%d: %s' % (module.name, first, summary), None),
                      ('# ' + '=' * 98, None), ('', None)])
        lines.extend((text, (module.name, number)) for number, text in module.body)
    return '\n'.join(text for text, _ in lines) + '\n', [where for _, where in lines]


def where(output, line_number):
    """'reprocessing/<module>.py:<line>' for a line of the generated script (as the build makes it now)."""
    _text, line_map = generate(output, OUTPUTS[output])
    if not 1 <= line_number <= len(line_map):
        raise BuildError('%s has %d lines, not %d' % (output, len(line_map), line_number))
    source = line_map[line_number - 1]
    if source is None:
        return '%s:%d is written by the build itself (header, banner or hoisted import)' % (output, line_number)
    return 'reprocessing/%s.py:%d' % source


def package_tree_id():
    """git's id of the tree reprocessing/ as it is on disk (equal to "git rev-parse COMMIT:reprocessing" once
    committed): the script names the source it was built from without depending on a commit made after it."""
    return _tree_id(PACKAGE)


def _tree_id(folder):
    import hashlib
    entries = []
    for path in folder.iterdir():
        if path.name == '__pycache__' or path.suffix == '.pyc':
            continue
        if path.is_dir():
            entries.append((path.name + '/', b'40000', path.name, bytes.fromhex(_tree_id(path))))
        else:
            data = path.read_bytes()
            blob = hashlib.sha1(b'blob %d\0' % len(data) + data).digest()
            mode = b'100755' if path.stat().st_mode & 0o111 else b'100644'
            entries.append((path.name, mode, path.name, blob))
    body = b''.join(mode + b' ' + name.encode() + b'\0' + sha for _key, mode, name, sha in sorted(entries))
    return hashlib.sha1(b'tree %d\0' % len(body) + body).hexdigest()


def built_from_commit(output):
    """The newest commit whose reprocessing/ is the tree the committed script names."""
    import re
    import subprocess
    header = (REPO / output).read_text(encoding='utf-8').splitlines()[:8]
    match = re.search(r'package tree ([0-9a-f]{40})', '\n'.join(header))
    if not match:
        raise BuildError('%s names no package tree in its header (built before tools/build.py wrote one)' % output)
    log = subprocess.run(['git', 'log', '--format=%H %T', '--all'], cwd=REPO, capture_output=True, text=True)
    for line in log.stdout.splitlines():
        commit = line.split()[0]
        tree = subprocess.run(['git', 'rev-parse', '%s:reprocessing' % commit], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
        if tree == match.group(1):
            return commit
    return 'no commit of this repository has reprocessing/ at tree %s (uncommitted edits?)' % match.group(1)


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
    for name in package_modules():
        module = read_module(name)
        layers[layer_of(name)].append(name)
        edges.extend((name, dependency) for dependency in module.imports)
    out = ['digraph reprocessing {', '  rankdir=TB; node [shape=box, fontname="sans-serif"];']
    for rank, names in sorted(layers.items()):
        out.append('  { rank=same; %s }  // layer %d: %s' % ('; '.join('"%s"' % n for n in sorted(names)), rank,
                                                           '/'.join(LAYERS[rank])))
    out.extend('  "%s" -> "%s";' % edge for edge in edges)
    return '\n'.join(out + ['}'])


def check_package():
    """Rules of every module, also those no script imports yet: layers, steps, namespace lookups."""
    for name in package_modules():
        module = read_module(name)
        for dependency in module.imports:
            check_import(name, dependency)
    for entry in OUTPUTS.values():
        modules_of(entry)


def main(args=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='only compare the committed scripts with the build')
    parser.add_argument('--graph', action='store_true', help='print the import graph (Graphviz dot)')
    parser.add_argument('--where', type=int, metavar='LINE',
                        help='the module line of a line of the generated script (a traceback\'s line number)')
    parser.add_argument('--script', choices=list(OUTPUTS), default='scriptForReprocessing.py',
                        help='with --where or --commit: which script (default: scriptForReprocessing.py)')
    parser.add_argument('--commit', action='store_true', help='the commit the committed script was built from')
    options = parser.parse_args(args)
    try:
        if options.graph:
            print(graph())
            return 0
        if options.where is not None:
            print(where(options.script, options.where))
            return 0
        if options.commit:
            print(built_from_commit(options.script))
            return 0
        check_package()
        stale = []
        for output, entry in OUTPUTS.items():
            text, _line_map = generate(output, entry)
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
