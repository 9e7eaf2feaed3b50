"""reprocessing_prep.py: working/ -> calibrated_final/, on deliveries made by tests/support/simulate_delivery.py.

Most tests call main() in this process (CASA is imported once); the ones about
imports, standalone use and Python 3.6 run it in a subprocess.
"""
import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PREP, REPO, error_lines, long_directory, md5_tree, one_error_line

import reprocessing_prep as prep

# Small deliveries: the tool never looks inside the data, except to convert pre-Cycle-9 MSes.
WORKING_DELIVERY = dict(layout='working', n_ebs=2, nchan=16, n_antennas=4, with_line_ms=True, with_uvcont=True)
CYCLE8_DELIVERY = dict(layout='cycle8_working', n_ebs=2, nchan=16, n_antennas=4)
CLUTTER_GLOBS = ('uid___*_X*[0-9a-f].ms', '*.flagversions', 'pipeline-*', 'casa-*.log')


# ---------------------------------------------------------------------------
# Fixtures (shared ones may move to conftest.py)
# ---------------------------------------------------------------------------

@pytest.fixture(scope='session')
def simulated_working(delivery_cache):
    """A restored Cycle-9+ working/ (targets, line MSes, uvcont tables, cont.dat, clutter); read-only."""
    from simulate_delivery import cached_delivery
    return Path(cached_delivery(delivery_cache, **WORKING_DELIVERY))


@pytest.fixture(scope='session')
def simulated_cycle8_working(delivery_cache):
    """A restored pre-Cycle-9 working/ (uid*_target.ms with DATA and CORRECTED_DATA); read-only."""
    from simulate_delivery import cached_delivery
    return Path(cached_delivery(delivery_cache, **CYCLE8_DELIVERY))


def _fresh_working(source, tmp_path):
    from simulate_delivery import copy_delivery
    copy_delivery(source, tmp_path / 'project')
    return tmp_path / 'project' / 'working'


@pytest.fixture
def working(simulated_working, tmp_path, monkeypatch):
    """A private copy of the Cycle-9+ working/, which is also the current directory (as for a user)."""
    path = _fresh_working(simulated_working, tmp_path)
    monkeypatch.chdir(str(path))
    return path


@pytest.fixture
def cycle8_working(simulated_cycle8_working, tmp_path, monkeypatch):
    path = _fresh_working(simulated_cycle8_working, tmp_path)
    monkeypatch.chdir(str(path))
    return path


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def listing(root):
    """Every path below root (relative), with a marker for links: what a user sees with ls -R."""
    root = Path(root)
    entries = []
    for path in sorted(root.rglob('*')):
        entries.append(str(path.relative_to(root)) + ('@' if path.is_symlink() else ''))
    return entries


def snapshot(directory):
    """Listing and checksums of everything in directory (the project folder holding working/)."""
    return listing(directory), md5_tree(directory)


def expected_tree(working):
    """What calibrated_final/ must hold for a Cycle-9+ working/ (top level and below)."""
    names = {'caltables', 'caltables/cont.dat', 'caltables/.cont.dat.delivered.sha256', 'measurement_sets',
             REPROCESSING_SCRIPT}
    names.update('caltables/' + p.name for p in working.glob('*uvcont.tbl'))
    names.update('measurement_sets/' + p.name for p in working.glob('uid*_targets*.ms'))
    return names


def top_two_levels(output):
    return {str(p.relative_to(output)) for p in output.glob('*')} | \
           {str(p.relative_to(output)) for p in output.glob('*/*')}


def no_partial_outputs(parent):
    return not list(Path(parent).glob('*.partial-*'))


REPROCESSING_SCRIPT = 'scriptForReprocessing.py'


# ---------------------------------------------------------------------------
# The three modes on a Cycle-9+ working/
# ---------------------------------------------------------------------------

def test_copy_builds_the_delivery_tree_and_ignores_the_clutter(working, capsys):
    products = sorted(p.name for p in working.glob('uid*_targets*.ms')) + ['cont.dat']
    assert len(products) == 5 and len(list(working.glob('*uvcont.tbl'))) == 2
    before = snapshot(working.parent)

    assert prep.main([]) == 0

    output = working.parent / 'calibrated_final'
    assert top_two_levels(output) == expected_tree(working)
    assert not any(p.is_symlink() for p in output.rglob('*'))
    for name in products:
        source = working / name
        copy = output / ('caltables' if name == 'cont.dat' else 'measurement_sets') / name
        assert (md5_tree(copy) == md5_tree(source)) if source.is_dir() else copy.read_bytes() == source.read_bytes()
    for table in working.glob('*uvcont.tbl'):
        assert md5_tree(output / 'caltables' / table.name) == md5_tree(table)
    assert (output / REPROCESSING_SCRIPT).read_bytes() == (REPO / REPROCESSING_SCRIPT).read_bytes()
    # working/ and everything beside it is untouched; only calibrated_final/ is new.
    after = snapshot(working.parent)
    assert [e for e in after[0] if not e.startswith('calibrated_final')] == before[0]
    assert {k: v for k, v in after[1].items() if not k.startswith('calibrated_final')} == before[1]
    assert sorted(p.name for p in working.parent.iterdir()) == ['calibrated_final', 'truth.json', 'working']
    out = capsys.readouterr()
    assert error_lines(out.err) == []
    assert 'Next steps:' in out.out and 'cd %s' % output in out.out
    for option in ('--contsub', '--image', '--calibrated_final'):
        assert 'scriptForReprocessing.py %s' % option in out.out


def test_link_makes_absolute_links_and_uses_no_space(working, monkeypatch, capsys):
    before = snapshot(working.parent)
    # Links need no space (only the small script is copied): a nearly full disk is fine.
    monkeypatch.setattr(prep, "free_bytes", lambda directory: 10 ** 6)

    assert prep.main(['--link']) == 0

    output = working.parent / 'calibrated_final'
    assert top_two_levels(output) == expected_tree(working)
    # (the delivered cont.dat's fingerprint is prep's own small file, not a link)
    for relative in expected_tree(working) - {'caltables', 'measurement_sets', REPROCESSING_SCRIPT,
                                              'caltables/.cont.dat.delivered.sha256'}:
        link = output / relative
        assert link.is_symlink(), relative
        target = os.readlink(str(link))
        assert os.path.isabs(target) and Path(target) == working / link.name
    assert not (output / REPROCESSING_SCRIPT).is_symlink()
    after = snapshot(working.parent)
    assert [e for e in after[0] if not e.startswith('calibrated_final')] == before[0]
    assert {k: v for k, v in after[1].items() if not k.startswith('calibrated_final')} == before[1]
    assert 'mode: link' in capsys.readouterr().out


def test_move_moves_the_products_and_leaves_the_clutter(working, capsys):
    products = sorted(p.name for p in working.glob('uid*_targets*.ms')) + \
        sorted(p.name for p in working.glob('*uvcont.tbl')) + ['cont.dat']
    digests = {name: md5_tree(working / name) if (working / name).is_dir() else (working / name).read_bytes()
               for name in products}
    clutter = sorted(p.name for p in working.iterdir() if p.name not in products)
    # the two calibrated full MSes, their flagversions, a weblog, a log
    assert len(clutter) == 6 and all(fnmatch.filter(clutter, pattern) for pattern in CLUTTER_GLOBS)
    expected = expected_tree(working)

    assert prep.main(['--move']) == 0

    output = working.parent / 'calibrated_final'
    assert top_two_levels(output) == expected
    for name in products:
        assert not os.path.lexists(str(working / name))
        moved = output / ('measurement_sets' if name.endswith('.ms') else 'caltables') / name
        assert not moved.is_symlink()
        assert (md5_tree(moved) if moved.is_dir() else moved.read_bytes()) == digests[name]
    assert sorted(p.name for p in working.iterdir()) == clutter
    assert 'mode: move' in capsys.readouterr().out


def test_failure_during_move_moves_everything_back(working, monkeypatch, capsys):
    before = snapshot(working.parent)
    real_move = prep.move_to
    calls = []

    def move_then_fail(*, source, destination):
        calls.append(source)
        if len(calls) == 3:
            raise prep._os_error('move %s' % source.name, OSError(5, 'Input/output error', str(destination)))
        real_move(source=source, destination=destination)
    monkeypatch.setattr(prep, 'move_to', move_then_fail)

    assert prep.main(['--move']) == 1

    line = one_error_line(capsys.readouterr())
    assert 'Input/output error' in line and 'moved back' in line
    assert snapshot(working.parent) == before


def test_failure_during_copy_removes_the_partial_output(working, monkeypatch, capsys):
    before = snapshot(working.parent)
    real_copy = prep.copy_to
    calls = []

    def copy_then_fail(**kwargs):
        calls.append(kwargs)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_copy(**kwargs)
    monkeypatch.setattr(prep, 'copy_to', copy_then_fail)

    assert prep.main([]) == 1

    assert 'interrupted' in one_error_line(capsys.readouterr())
    assert snapshot(working.parent) == before


def test_script_copy_alone_runs_standalone_and_warns_without_script_for_reprocessing(working, tmp_path):
    alone = tmp_path / 'bin'
    alone.mkdir()
    shutil.copy2(str(PREP), str(alone / prep.PREP_SCRIPT_NAME))
    output = tmp_path / 'elsewhere' / 'my_calibrated_final'
    output.parent.mkdir()

    result = subprocess.run([sys.executable, '-X', 'importtime', str(alone / prep.PREP_SCRIPT_NAME), '--link',
                             '--output', str(output)],
                            cwd=str(working), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=120)

    assert result.returncode == 0, result.stderr
    imports = [line for line in result.stderr.splitlines() if line.startswith('import time:')]
    assert imports and not [line for line in imports if 'casa' in line]    # no MS to convert: no CASA
    assert sorted(p.name for p in output.iterdir()) == ['caltables', 'measurement_sets']
    warnings = [line for line in result.stderr.splitlines() if line.strip() and line not in imports]
    assert len(warnings) == 1 and warnings[0].startswith('WARNING: no scriptForReprocessing.py beside')
    assert 'cp /path/to/your/delivery/script/scriptForReprocessing.py .' in result.stdout


def test_working_and_output_options(working, tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    assert prep.main(['--link', '--working', str(working), '--output', 'here']) == 0
    assert top_two_levels(tmp_path / 'here') == expected_tree(working)


# ---------------------------------------------------------------------------
# Pre-Cycle-9: uid*_target.ms -> uid*_targets.ms (DATA) + uid*_targets_line.ms (CORRECTED_DATA)
# ---------------------------------------------------------------------------

def _rows_by_key(casa, ms, column):
    """{(time, antenna1, antenna2, spw id): column value} of an MS (row order may differ)."""
    table = casa.casatools.table()
    assert table.open(str(ms / 'DATA_DESCRIPTION'))
    ddid_to_spw = table.getcol('SPECTRAL_WINDOW_ID')
    table.close()
    assert table.open(str(ms))
    try:
        keys = zip(table.getcol('TIME'), table.getcol('ANTENNA1'), table.getcol('ANTENNA2'),
                   ddid_to_spw[table.getcol('DATA_DESC_ID')])
        values = table.getcol(column)
        return {key: values[..., row] for row, key in enumerate(keys)}, table.colnames()
    finally:
        table.close()


def test_cycle8_target_ms_becomes_targets_and_targets_line(cycle8_working, casa, capsys):
    sources = sorted(cycle8_working.glob('uid*_target.ms'))
    assert len(sources) == 2
    source_digests = {s.name: md5_tree(s) for s in sources}

    assert prep.main([]) == 0

    output = cycle8_working.parent / 'calibrated_final'
    out = capsys.readouterr()
    assert error_lines(out.err) == []
    uids = [s.name[:-len('_target.ms')] for s in sources]
    assert sorted(p.name for p in (output / 'measurement_sets').iterdir()) == sorted(
        [u + '_targets.ms' for u in uids] + [u + '_targets_line.ms' for u in uids])
    assert sorted(p.name for p in (output / 'caltables').iterdir()) == ['.cont.dat.delivered.sha256', 'cont.dat']
    assert not list(output.glob('.incomplete*'))
    for source, uid in zip(sources, uids):
        assert 'pre-Cycle-9 %s becomes %s_targets.ms' % (source.name, uid) in out.out
        source_data, _ = _rows_by_key(casa, source, 'DATA')
        source_corrected, _ = _rows_by_key(casa, source, 'CORRECTED_DATA')
        targets, targets_columns = _rows_by_key(casa, output / 'measurement_sets' / (uid + '_targets.ms'), 'DATA')
        line, line_columns = _rows_by_key(casa, output / 'measurement_sets' / (uid + '_targets_line.ms'), 'DATA')
        # Same rows and the ALMA spw ids (25, 27) kept: the keys hold the spw id, not a reindexed one.
        assert set(targets) == set(line) == set(source_data)
        assert {key[3] for key in targets} == {25, 27}
        for key, value in source_data.items():
            np.testing.assert_array_equal(targets[key], value)
            np.testing.assert_array_equal(line[key], source_corrected[key])
        assert 'CORRECTED_DATA' not in targets_columns and 'CORRECTED_DATA' not in line_columns
        assert not np.allclose(targets[key], line[key])     # line = the continuum-subtracted data
        # The renamed MS is a complete, openable measurement set.
        ms = casa.casatools.ms()
        assert ms.open(str(output / 'measurement_sets' / (uid + '_targets_line.ms')))
        assert ms.nrow() == len(line)
        ms.close()
    # The sources are byte-identical: mstransform only read them.
    assert {s.name: md5_tree(s) for s in sources} == source_digests


def test_cycle8_conversion_from_a_working_directory_too_long_for_casa(simulated_cycle8_working, tmp_path):
    """casacore cannot work in a directory of 1,024+ characters (casa_engine.CASA_CWD_LIMIT): the script
    leaves it before CASA opens a table, and builds calibrated_final/ beside working/ all the same."""
    from simulate_delivery import copy_delivery
    project = long_directory(tmp_path / 'long', 1403)
    os.rmdir(str(project))
    copy_delivery(simulated_cycle8_working, project)
    working = project / 'working'
    result = subprocess.run([sys.executable, str(PREP)], cwd=str(working), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])  # was 1: every table open failed
    built = sorted(p.name for p in (project / 'calibrated_final' / 'measurement_sets').iterdir())
    assert len(built) == 4 and len([name for name in built if name.endswith('_targets_line.ms')]) == 2, built


def test_cycle8_without_corrected_data_makes_no_line_ms():
    working, output = Path('/data/working'), Path('/data/calibrated_final')
    source = working / 'uid___A002_X1_X2_target.ms'
    products = prep.DeliveryProducts([], [], [prep.Cycle8Conversion(source, 'uid___A002_X1_X2_targets.ms',
                                                                    'uid___A002_X1_X2_targets_line.ms')],
                                     [], working / 'cont.dat', [])
    plan = prep.build_plan(working=working, output=output, mode=prep.MODE_LINK, products=products,
                           sizes={source: 1000, working / 'cont.dat': 10}, corrected_column={source: False},
                           reprocessing_script=None, pid=42)
    assert [(s.action, str(s.destination), s.datacolumn) for s in plan.steps] == [
        ('convert', 'measurement_sets/uid___A002_X1_X2_targets.ms', 'data'),
        ('deliver', 'caltables/cont.dat', None)]
    assert any('no CORRECTED_DATA' in w for w in plan.warnings)
    assert plan.partial_output == Path('/data/calibrated_final.partial-42')
    # A conversion writes a new MS even with --link: its size (plus the margin) is needed.
    assert plan.bytes_needed == 1100


# ---------------------------------------------------------------------------
# Refusals, dry run, free space
# ---------------------------------------------------------------------------

def test_refuses_an_existing_output(working, capsys):
    output = working.parent / 'calibrated_final'
    output.mkdir()
    (output / 'mine.txt').write_text('keep me\n')
    before = snapshot(working.parent)

    assert prep.main([]) == 1

    assert 'already exists' in one_error_line(capsys.readouterr())
    assert snapshot(working.parent) == before


def test_run_inside_a_delivery_says_where_to_run_it_and_touches_nothing(working, monkeypatch, capsys):
    assert prep.main([]) == 0  # makes ../calibrated_final, a delivery
    capsys.readouterr()
    delivery = working.parent / 'calibrated_final'
    monkeypatch.chdir(str(delivery))
    before = snapshot(working.parent)

    assert prep.main([]) == 1

    line = one_error_line(capsys.readouterr())
    assert 'is a delivery' in line and 'run it in %s' % working in line, line
    assert 'remove or rename' not in line  # the old advice would have pointed at the user's delivery
    assert snapshot(working.parent) == before


def test_refuses_when_there_is_nothing_to_prep(tmp_path, monkeypatch, capsys):
    working = tmp_path / 'working'
    working.mkdir()
    (working / 'cont.dat').write_text('Field: x\n')
    (working / 'casa-20240101-000000.log').write_text('log\n')
    monkeypatch.chdir(str(working))

    assert prep.main([]) == 1

    line = one_error_line(capsys.readouterr())
    assert 'no uid*_targets.ms or uid*_target.ms in %s' % working in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ['working']


def test_missing_cont_dat_warns_and_continues(working, capsys):
    (working / 'cont.dat').unlink()

    assert prep.main(['--link']) == 0

    out = capsys.readouterr()
    warnings = error_lines(out.err)
    assert len(warnings) == 1 and warnings[0].startswith('WARNING: no cont.dat in ')
    caltables = working.parent / 'calibrated_final' / 'caltables'
    assert sorted(p.name for p in caltables.iterdir()) == sorted(p.name for p in working.glob('*uvcont.tbl'))


@pytest.mark.parametrize('layout', ['working', 'cycle8'])
def test_dry_run_prints_the_plan_and_changes_nothing(layout, request, capsys):
    working = request.getfixturevalue('working' if layout == 'working' else 'cycle8_working')
    before = snapshot(working.parent)

    assert prep.main(['--dry-run']) == 0

    assert snapshot(working.parent) == before
    out = capsys.readouterr()
    assert error_lines(out.err) == []
    assert 'Plan (mode: copy)' in out.out and 'disk space needed:' in out.out and 'free:' in out.out
    assert 'Dry run: nothing was changed.' in out.out
    assert '-> measurement_sets/' in out.out and '-> caltables/cont.dat' in out.out


def test_dry_run_of_a_cycle8_delivery_in_a_fresh_python_writes_not_even_a_casa_log(cycle8_working):
    # In a fresh process CASA is configured by the script itself (its log goes to /dev/null here).
    before = snapshot(cycle8_working.parent)
    result = subprocess.run([sys.executable, str(PREP), '--dry-run'], cwd=str(cycle8_working),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert result.returncode == 0 and result.stderr == '', result.stderr
    assert 'convert CORRECTED_DATA' in result.stdout and 'Dry run: nothing was changed.' in result.stdout
    assert snapshot(cycle8_working.parent) == before


def test_refuses_when_the_copy_does_not_fit(working, monkeypatch, capsys):
    size = sum(prep.directory_bytes(p, follow_links=True) for p in list(working.glob('uid*_targets*.ms')) + list(working.glob('*uvcont.tbl')))
    assert size > 10 ** 6
    monkeypatch.setattr(prep, "free_bytes", lambda directory: size)   # fits only without the margin
    before = snapshot(working.parent)

    assert prep.main([]) == 1

    line = one_error_line(capsys.readouterr())
    assert line.startswith('ERROR: not enough free disk in %s' % working.parent) and '--link' in line
    assert snapshot(working.parent) == before


def test_leftover_partial_output_is_reported_and_kept(working, capsys):
    leftover = working.parent / 'calibrated_final.partial-1'
    (leftover / 'measurement_sets').mkdir(parents=True)

    assert prep.main(['--link']) == 0

    warnings = error_lines(capsys.readouterr().err)
    assert len(warnings) == 1 and str(leftover) in warnings[0] and 'interrupted run' in warnings[0]
    assert (leftover / 'measurement_sets').is_dir()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('argv, fragment', [
    (['--link', '--move'], 'not allowed with argument'),
    (['--bogus'], 'unrecognized arguments: --bogus'),
    (['--working', '/nonexistent/working'], '/nonexistent/working is not a directory'),
    (['--output', ''], 'the output directory name is empty'),
    (['--output'], 'expected one argument'),
])
def test_usage_errors_exit_2_with_one_line(argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(str(tmp_path))
    assert prep.main(argv) == 2
    line = one_error_line(capsys.readouterr())
    assert fragment in line and '--help' in line
    assert list(tmp_path.iterdir()) == []


def test_help_and_usage_errors_never_import_casa():
    probe = ('import sys, io, contextlib; sys.path.insert(0, %r); import reprocessing_prep as p\n'
             'with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n'
             '    codes = [p.main(["--help"]), p.main(["--bogus"]), p.main(["--link", "--move"])]\n'
             'print(codes, sorted(m for m in sys.modules if m.startswith(("casa", "numpy"))))' % str(REPO))
    out = subprocess.run([sys.executable, '-c', probe], stdout=subprocess.PIPE, universal_newlines=True,
                         check=True).stdout
    assert out.strip() == '[0, 2, 2] []'
    # And as a user runs it: -X importtime lists every module imported.
    result = subprocess.run([sys.executable, '-X', 'importtime', str(PREP), '--help'], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 0 and '--link' in result.stdout and '--dry-run' in result.stdout
    assert 'import time:' in result.stderr and 'casa' not in result.stderr


def test_arguments_after_the_script_path_under_casa_c(monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['/opt/casa/bin/casa', '--nologger', '-c',
                                      '/data/working/reprocessing_prep.py', '--link', '--dry-run'])
    assert prep.script_arguments(None, script=prep.PREP_SCRIPT_NAME) == ['--link', '--dry-run']
    monkeypatch.setattr(sys, 'argv', ['reprocessing_prep.py', '--move'])
    assert prep.script_arguments(None, script=prep.PREP_SCRIPT_NAME) == ['--move']


def test_stays_python_36_compatible():
    vermin = Path(sys.executable).parent / 'vermin'
    if not vermin.exists():
        pytest.skip('vermin is not installed in this environment')
    result = subprocess.run([str(vermin), '--no-tips', '--violations', '-t=3.6-', str(PREP)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode == 0 and 'Target versions not met' not in result.stdout, result.stdout
