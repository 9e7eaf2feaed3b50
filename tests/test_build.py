"""The package and the build: the committed scripts are what the build makes, and the build refuses
what would make the flat file mean something else than the package (cycles, upward imports, a name
defined twice, a heavy import at the top)."""
import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, STALE

sys.path.insert(0, str(REPO / 'tools'))
import build

MODULE_LINE_LIMIT = 500


def package_module_paths():
    return sorted(p for p in (REPO / 'reprocessing').rglob('*.py')
                  if p.name not in build.NOT_BUILT and '__pycache__' not in p.parts)


def module_key(path):
    return path.relative_to(REPO / 'reprocessing').with_suffix('').as_posix()


def test_the_committed_scripts_are_what_the_build_makes():
    """The suite rebuilds stale scripts before it starts (conftest.py), so that an edit of the package is
    tested as edited; that it had to is a failure here: the scripts users download must be committed built."""
    assert not STALE, '\n'.join('%s was stale: the suite rebuilt it; commit the build' % name for name in STALE)
    done = subprocess.run([sys.executable, str(REPO / 'tools' / 'build.py'), '--check'], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_module_is_in_a_layer_has_a_docstring_and_stays_small():
    modules = package_module_paths()
    assert len(modules) >= 20
    for path in modules:
        build.layer_of(module_key(path))
        text = path.read_text(encoding='utf-8')
        assert ast.get_docstring(ast.parse(text)), path.name
        assert len(text.splitlines()) <= MODULE_LINE_LIMIT, '%s has %d lines' % (path.name, len(text.splitlines()))
    for folder in (REPO / 'reprocessing').iterdir():
        if folder.is_dir() and folder.name != '__pycache__':  # each layer folder says what it holds
            assert ast.get_docstring(ast.parse((folder / '__init__.py').read_text(encoding='utf-8'))), folder


def test_both_scripts_are_built_from_the_whole_package():
    """Every module of the package ends up in at least one script (no dead module)."""
    used = set()
    for entry in build.OUTPUTS.values():
        used |= {module.name for module in build.modules_of(entry)}
    assert used == {module_key(p) for p in package_module_paths()}


def test_the_folders_are_the_layers_of_the_import_graph():
    """Every import points to the same layer or a lower one, and no step imports another step."""
    imports = 0
    for path in package_module_paths():
        name = module_key(path)
        for dependency in build.read_module(name).imports:
            imports += 1
            assert build.layer_of(dependency) >= build.layer_of(name), (name, dependency)
            assert not (name.startswith('steps/') and dependency.startswith('steps/')), (name, dependency)
    assert imports > 100


def test_the_package_runs_as_itself_with_the_scripts_help():
    for module, script in (('reprocessing', 'scriptForReprocessing.py'), ('reprocessing.apps.prep', 'reprocessing_prep.py')):
        package = subprocess.run([sys.executable, '-m', module, '--help'], cwd=str(REPO), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, universal_newlines=True)
        flat = subprocess.run([sys.executable, str(REPO / script), '--help'], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True)
        assert package.returncode == flat.returncode == 0, package.stderr + flat.stderr
        assert package.stdout == flat.stdout and 'usage: %s' % script in flat.stdout


def test_a_script_line_maps_back_to_its_module_line():
    lines = (REPO / 'scriptForReprocessing.py').read_text(encoding='utf-8').splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith('def run_contsub_fast('))
    where = build.where('scriptForReprocessing.py', number)
    path, line = where.rsplit(':', 1)
    assert path == 'reprocessing/steps/contsub_fast.py'
    assert (REPO / path).read_text(encoding='utf-8').splitlines()[int(line) - 1] == lines[number - 1]
    marker = [line for line in lines if line.startswith('# reprocessing/steps/contsub_fast.py:')]
    assert len(marker) == 1, marker


def test_the_header_names_the_package_tree_as_git_does():
    header = '\n'.join((REPO / 'scriptForReprocessing.py').read_text(encoding='utf-8').splitlines()[:8])
    assert 'package tree %s ' % build.package_tree_id() in header
    if shutil.which('git') and (REPO / '.git').exists() and not subprocess.run(
            ['git', 'status', '--porcelain', '--', 'reprocessing'], cwd=str(REPO), stdout=subprocess.PIPE,
            universal_newlines=True).stdout.strip():
        committed = subprocess.run(['git', 'rev-parse', 'HEAD:reprocessing'], cwd=str(REPO), stdout=subprocess.PIPE,
                                   universal_newlines=True).stdout.strip()
        assert committed == build.package_tree_id()


def test_the_generated_script_keeps_the_defaults_block_at_the_top():
    lines = (REPO / 'scriptForReprocessing.py').read_text(encoding='utf-8').splitlines()
    docstring_end = [i for i, line in enumerate(lines) if line.startswith('"""') or line.endswith('"""')][1]
    code = [i for i in range(docstring_end + 1, len(lines)) if lines[i] and not lines[i].startswith('#')]
    # the Python 2 guard (one line), then the user-editable defaults
    assert lines[code[0]].startswith('_NEEDS_PYTHON_3 = lambda: print('), lines[code[0]]
    assert lines[code[1]].startswith('IMAGES_DIR = '), lines[code[1]]
    assert 'GENERATED by tools/build.py' in lines[2] and lines[1] == '# -*- coding: utf-8 -*-'


def test_package_modules_import_without_casa():
    code = ('import importlib, pkgutil, sys, reprocessing\n'
            'for info in pkgutil.walk_packages(reprocessing.__path__, "reprocessing."):\n'
            '    if not info.name.endswith("__main__"): importlib.import_module(info.name)\n'
            'heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("casatools", "casatasks", "pipeline", '
            '"numpy", "matplotlib"))\n'
            'print(heavy)\n')
    done = subprocess.run([sys.executable, '-c', code], cwd=str(REPO), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'


def test_pyflakes_finds_nothing_in_the_package_and_the_scripts():
    pytest.importorskip('pyflakes')
    paths = sorted((REPO / 'reprocessing').rglob('*.py')) + [REPO / 'scriptForReprocessing.py',
                                                             REPO / 'reprocessing_prep.py']
    done = subprocess.run([sys.executable, '-m', 'pyflakes'] + [str(p) for p in paths], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    problems = []
    for line in (done.stdout + done.stderr).splitlines():
        path, number = line.split(':')[:2]
        source = Path(path).read_text(encoding='utf-8').splitlines()[int(number) - 1]
        if 'noqa' not in source:  # casampi.private.start_mpi is imported for what its import does
            problems.append(line)
    assert not problems, '\n'.join(problems)


def test_ruff_finds_nothing_in_the_package_the_tools_the_tests_and_the_benchmarks():
    """The rules are pyproject.toml's [tool.ruff.lint] (bugs, not style)."""
    if importlib.util.find_spec('ruff') is None:
        pytest.skip('ruff is not installed (it is in the "test" extra: make setup)')
    done = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '--output-format', 'concise',
                           'reprocessing', 'tools', 'tests', 'bench'], cwd=str(REPO), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stdout + done.stderr


# -- what the build refuses ---------------------------------------------------------------------------

@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    copy = tmp_path / 'reprocessing'
    shutil.copytree(str(REPO / 'reprocessing'), str(copy))
    monkeypatch.setattr(build, 'PACKAGE', copy)
    return copy


def add_line(path, after, line):
    text = path.read_text(encoding='utf-8')
    assert after in text
    path.write_text(text.replace(after, after + '\n' + line, 1), encoding='utf-8')


def test_the_real_package_builds(package_copy):
    for output, entry in build.OUTPUTS.items():
        assert build.generate(output, entry)[0].splitlines()[6:] == \
            (REPO / output).read_text(encoding='utf-8').splitlines()[6:]  # the header names the copy's tree


def test_an_import_cycle_is_refused(package_copy):
    # contdat imports messages (both leaves, which the layers allow); messages importing contdat closes a circle.
    add_line(package_copy / 'core' / 'messages.py', 'import sys', 'from .fileops import human_bytes')
    with pytest.raises(build.BuildError, match=r'import cycle: (core/messages -> core/fileops -> core/messages|'
                                               r'core/fileops -> core/messages -> core/fileops)'):
        build.generate('scriptForReprocessing.py', 'apps/reprocess')


def test_an_upward_import_is_refused(package_copy):
    add_line(package_copy / 'core' / 'fileops.py', 'from .messages import ReprocessingError',
             'from ..plan.plan import make_plan')
    with pytest.raises(build.BuildError, match=r'core/fileops\.py \(layer 5\) imports plan/plan \(layer 1\).* must point down'):
        build.generate('scriptForReprocessing.py', 'apps/reprocess')


def test_a_step_importing_another_step_is_refused(package_copy):
    add_line(package_copy / 'steps' / 'concat.py', 'import shutil', 'from .cleanup import run_cleanup')
    with pytest.raises(build.BuildError, match=r'steps/concat\.py imports reprocessing/steps/cleanup\.py: a step '
                                               r'never imports another step'):
        build.generate('scriptForReprocessing.py', 'apps/reprocess')


@pytest.mark.parametrize('line, refusal', [
    ("    spw = globals()['SPW']", r'globals\(\) reads the flat script'),
    ("    spw = getattr(options, 'spw', None)", r'getattr\(options, \.\.\.\)'),
])
def test_namespace_lookups_are_refused(package_copy, line, refusal):
    add_line(package_copy / 'steps' / 'concat.py', 'def run_concat(plan, state, step, casa):', line)
    with pytest.raises(build.BuildError, match=refusal):
        build.check_package()


def test_a_name_defined_in_two_modules_is_refused(package_copy):
    with open(str(package_copy / 'imaging' / 'heuristics.py'), 'a') as handle:
        handle.write('\n\ndef human_bytes(count):\n    return str(count)\n')
    with pytest.raises(build.BuildError, match='"human_bytes" is defined in both'):
        build.generate('scriptForReprocessing.py', 'apps/reprocess')


def test_a_top_level_import_of_casa_is_refused(package_copy):
    add_line(package_copy / 'casa' / 'ms_tables.py', 'import collections', 'import casatools')
    with pytest.raises(build.BuildError, match='"casatools" is imported at the top level'):
        build.generate('scriptForReprocessing.py', 'apps/reprocess')


def test_an_import_of_a_name_a_module_does_not_define_is_refused(package_copy):
    add_line(package_copy / 'steps' / 'concat.py', 'from ..casa.casa_engine import casa_task, opened_table',
             'from ..core.fileops import read_ms_layout')
    with pytest.raises(build.BuildError, match='imports read_ms_layout from core/fileops, which does not define it'):
        build.generate('scriptForReprocessing.py', 'apps/reprocess')


def _python2():
    import glob
    for candidate in sorted(glob.glob(os.path.expanduser('~/.pyenv/versions/2.7*/bin/python'))) + ['python2']:
        path = shutil.which(candidate) or (candidate if os.path.isfile(candidate) else None)
        # a pyenv shim exists without the version being selected: it answers 'command not found' (exit 127)
        if path and subprocess.run([path, '-c', 'pass'], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL).returncode == 0:
            return path
    return None


@pytest.mark.skipif(_python2() is None, reason='no Python 2 on this machine')
@pytest.mark.parametrize('script', sorted(build.OUTPUTS))
def test_python2_users_are_told_the_script_needs_casa_6(script):
    result = subprocess.run([_python2(), str(REPO / script), '--help'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    assert result.returncode != 0
    assert 'ERROR: %s needs CASA 6 (Python 3.6 or later)' % script in result.stderr, result.stderr
    assert 'Non-ASCII' not in result.stderr
