"""The command-line contract: what a user sees before any CASA work starts.

These tests need no measurement set content and never import CASA.
"""
import fcntl
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import scriptForReprocessing as sfr
from conftest import PREP, SCRIPT, error_lines, requires_casa


def make_layout(root, *, targets=('uid___A002_X1_X1_targets.ms',), line=(), contdat=True):
    """A delivery's directory layout with empty stand-ins for MSes (enough for the checks before CASA)."""
    (root / 'measurement_sets').mkdir(parents=True)
    (root / 'caltables').mkdir()
    for name in tuple(targets) + tuple(line):
        (root / 'measurement_sets' / name).mkdir()
        (root / 'measurement_sets' / name / 'table.dat').write_bytes(b'x' * 100)
    if contdat:
        (root / 'caltables' / 'cont.dat').write_text('Field: A\n\nSpectralWindow: 25\n230.0~230.1GHz LSRK\n')
    return root


def tree_listing(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*'))


@pytest.mark.parametrize('argv, fragment', [
    ([], 'no action given'),
    (['--bogus'], 'unrecognized arguments: --bogus'),
    (['--contsub', '--contsub_fast'], 'choose one'),
    (['--weblog', '--cleanup'], 'run them separately'),
    (['--weblog', '--calibrated_final'], 'run --weblog on its own'),
    (['--overwrite-line', '--calibrated_final'], 'add one of them'),
    (['--delivery', '/nonexistent/place', '--calibrated_final'], 'is not a directory'),
])
def test_usage_errors_exit_2_with_one_error_line(argv, fragment, capsys):
    assert sfr.main(argv) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith('ERROR: ') and fragment in lines[0] and ' — ' in lines[0]


def test_help_exits_0_and_lists_every_original_flag(capsys):
    assert sfr.main(['--help']) == 0
    text = capsys.readouterr().out
    for flag in ('--contsub', '--contsub_fast', '--image', '--cleanup', '--weblog', '--calibrated_final',
                 '--calibrated_final_line', '--dry-run', '--delivery'):
        assert flag in text


def test_help_and_usage_errors_never_import_casa():
    probe = ('import sys, io, contextlib; sys.path.insert(0, %r); import scriptForReprocessing as s\n'
             'with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n'
             '    codes = [s.main(["--help"]), s.main([]), s.main(["--contsub", "--contsub_fast"])]\n'
             'print(codes, sorted(m for m in sys.modules if m.startswith(("casa", "pipeline", "numpy"))))'
             % str(SCRIPT.parent))
    out = subprocess.run([sys.executable, '-c', probe], stdout=subprocess.PIPE, universal_newlines=True,
                         check=True).stdout
    assert out.strip() == '[0, 2, 2] []'


def test_not_a_delivery_says_where_to_run(tmp_path, capsys):
    assert sfr.main(['--delivery', str(tmp_path), '--calibrated_final']) == 1
    line, = error_lines(capsys.readouterr().err)
    assert 'no measurement_sets/ directory' in line and '--delivery' in line


def test_cycle8_delivery_points_to_prep(tmp_path, capsys):
    make_layout(tmp_path, targets=('uid___A002_X1_X1_target.ms',))
    assert sfr.main(['--delivery', str(tmp_path), '--calibrated_final']) == 1
    line, = error_lines(capsys.readouterr().err)
    assert 'pre-Cycle 9' in line and 'reprocessing_prep.py' in line


def test_calibrated_final_line_needs_line_measurement_sets(tmp_path, capsys):
    make_layout(tmp_path)
    before = tree_listing(tmp_path)
    assert sfr.main(['--delivery', str(tmp_path), '--calibrated_final_line']) == 1
    assert 'no uid*_targets_line.ms' in capsys.readouterr().err
    assert tree_listing(tmp_path) == before


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    make_layout(tmp_path)
    (tmp_path / 'measurement_sets' / 'calibrated_final.ms').mkdir()
    before = tree_listing(tmp_path)
    assert sfr.main(['--delivery', str(tmp_path), '--calibrated_final']) == 1
    assert 'already exists' in capsys.readouterr().err
    assert tree_listing(tmp_path) == before


def test_contsub_refuses_to_replace_line_measurement_sets_silently(tmp_path, capsys):
    make_layout(tmp_path, line=('uid___A002_X1_X1_targets_line.ms',))
    assert sfr.main(['--delivery', str(tmp_path), '--contsub_fast']) == 1
    assert '--overwrite-line' in capsys.readouterr().err


def test_contsub_needs_cont_dat(tmp_path, capsys):
    make_layout(tmp_path, contdat=False)
    assert sfr.main(['--delivery', str(tmp_path), '--contsub_fast']) == 1
    assert 'cont.dat is missing' in capsys.readouterr().err


def test_image_directory_must_be_new_or_empty(tmp_path, capsys):
    make_layout(tmp_path)
    (tmp_path / 'images').mkdir()
    (tmp_path / 'images' / 'old.fits').write_text('x')
    assert sfr.main(['--delivery', str(tmp_path), '--image']) == 1
    assert 'is not empty' in capsys.readouterr().err


def test_not_enough_disk_stops_before_any_work(tmp_path, capsys, monkeypatch):
    make_layout(tmp_path)
    monkeypatch.setattr(sfr, 'free_bytes', lambda path: 10)
    before = tree_listing(tmp_path)
    assert sfr.main(['--delivery', str(tmp_path), '--calibrated_final']) == 1
    assert 'not enough free disk' in capsys.readouterr().err
    assert tree_listing(tmp_path) == before


def test_a_second_concurrent_run_is_refused(tmp_path, capsys):
    make_layout(tmp_path)
    with open(str(tmp_path / sfr.LOCK_NAME), 'a+') as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        held.write('pid 4242 on somehost since today\n')
        held.flush()
        assert sfr.main(['--delivery', str(tmp_path), '--cleanup']) == 1
    line, = error_lines(capsys.readouterr().err)
    assert 'another run is working in this delivery (pid 4242' in line


def test_arguments_after_the_script_path_under_casa_c(monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['/opt/casa/bin/casa', '--nologger', '-c',
                                      '/data/calibrated_final/scriptForReprocessing.py', '--contsub'])
    assert sfr.script_arguments(None, script=sfr.SCRIPT_NAME) == ['--contsub']


@pytest.mark.parametrize('script', [SCRIPT, PREP])
def test_scripts_stay_python_36_compatible(script):
    vermin = Path(sys.executable).parent / 'vermin'
    if not vermin.exists():
        pytest.skip('vermin is not installed in this environment')
    if not script.exists():
        pytest.skip('%s does not exist yet' % script.name)
    result = subprocess.run([str(vermin), '--no-tips', '--violations', '-t=3.6-', str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert 'Target versions not met' not in result.stdout, result.stdout
    assert result.returncode == 0, result.stdout


def test_errors_still_print_on_an_ascii_only_terminal(tmp_path):
    """Python 3.6 under LANG=C cannot encode the dash of 'what — what to do'."""
    result = subprocess.run([sys.executable, str(SCRIPT), '--contsub', '--contsub_fast'], cwd=str(tmp_path),
                            env={'PYTHONIOENCODING': 'ascii', 'PATH': '/usr/bin:/bin'},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ('ERROR: --contsub and --contsub_fast both subtract the continuum - '
                                     'choose one')


@requires_casa
@pytest.mark.parametrize('missing, advice', [('six', 'install it ("pip install six")'),
                                             ('distutils', 'install setuptools ("pip install setuptools")')])
def test_a_module_casa_lacks_is_named_with_what_provides_it(missing, advice):
    """CASA failing to import names the missing module and the package that brings it (casatasks, imported
    when first used where casaconfig configures CASA, fails then in the same words)."""
    code = ('import sys\nsys.modules[%r] = None\nsys.path.insert(0, %r)\nimport scriptForReprocessing as s\n'
            'try:\n    s.load_casa().casatasks\n    print("LOADED")\nexcept s.ReprocessingError as error:\n'
            '    print(error)\n' % (missing, str(SCRIPT.parent)))
    done = subprocess.run([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    if done.stdout.strip() == 'LOADED':
        pytest.skip('this CASA release does not import %s' % missing)
    assert done.stdout.startswith('CASA failed to import in this Python'), done.stdout + done.stderr
    named = ("No module named '%s" % missing, 'import of %s halted' % missing)  # Python 3.7+, 3.6
    assert any(words in done.stdout for words in named) and done.stdout.strip().endswith(advice)


def run_loading_modular_casa(code, *, cwd, home):
    """Run code after "import scriptForReprocessing as s" in a fresh Python, in cwd, with HOME=home."""
    prelude = 'import sys\nsys.path.insert(0, %r)\nimport scriptForReprocessing as s\n' % str(SCRIPT.parent)
    return subprocess.run([sys.executable, '-c', prelude + code], cwd=str(cwd), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120,
                          env={'HOME': str(home), 'PATH': '/usr/bin:/bin', 'PYTHONIOENCODING': 'utf-8'})


needs_casa_without_casaconfig = pytest.mark.skipif(
    importlib.util.find_spec('casatools') is None or importlib.util.find_spec('casaconfig') is not None,
    reason='modular CASA 6.4/6.5 (casatools without casaconfig) is not what this Python has')


@needs_casa_without_casaconfig
def test_casa_6_4_and_6_5_log_where_told_from_their_first_line_and_keep_the_users_settings(tmp_path):
    """Without casaconfig, casatasks opens casa-<UTC time>.log in the current directory as it is imported,
    unless casataskrc (or ~/.casa/config.py) names a log file; ~/.casa is only read."""
    home, work = tmp_path / 'home', tmp_path / 'work'
    (home / '.casa').mkdir(parents=True)
    work.mkdir()
    (home / '.casa' / 'config.py').write_text('logfile = "/elsewhere/not-used.log"\ntelemetry_enabled = False\n')
    done = run_loading_modular_casa(
        'c = s.load_casa(logfile="run.log")\nc.casatasks.casalog.post("after loading")\n'
        'import casatasks.config\nprint(c.kind, casatasks.config.telemetry_enabled, "casataskrc" in sys.modules)\n',
        cwd=work, home=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['modular', 'False', 'False'], done.stdout + done.stderr
    assert sorted(p.name for p in work.iterdir()) == ['run.log'], 'a log outside the one asked for'
    log = (work / 'run.log').read_text()
    assert 'CASA Version' in log and 'after loading' in log, 'CASA did not log there from its start'
    assert sorted(p.name for p in (home / '.casa').iterdir()) == ['config.py']


@pytest.mark.skipif(importlib.util.find_spec('casaconfig') is None, reason='CASA 6.6+ (casaconfig) only')
def test_casatasks_is_imported_when_first_used_and_logs_where_the_run_switched_to(tmp_path):
    """Planning needs casatools only (casatasks' import is about 1 s); a task run later logs into the log the
    run switched to after loading, as the plan loads CASA with /dev/null as its log (measured: casatasks,
    imported after that switch, kept /dev/null), also when another imports casatasks (the pipeline does)."""
    home, work = tmp_path / 'home', tmp_path / 'work'
    home.mkdir()
    work.mkdir()
    for importer in ('c.casatasks', 'import casatasks'):
        done = run_loading_modular_casa(
            'import os\nc = s.load_casa(logfile=os.devnull)\nprint("casatasks" in sys.modules)\n'
            'c.casalog.setlogfile(os.path.abspath("run.log"))\n%s\n'
            'print("casatasks" in sys.modules, c.casalog.logfile() == os.path.abspath("run.log"))\n'
            'import casatasks\ncasatasks.casalog.post("posted by casatasks")\n' % importer,
            cwd=work, home=home)
        _check_the_run_log(done, work)
        (work / 'run.log').unlink()


def _check_the_run_log(done, work):
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['False', 'True', 'True'], done.stdout + done.stderr
    assert sorted(p.name for p in work.iterdir()) == ['run.log'], 'a log outside the one asked for'
    assert 'posted by casatasks' in (work / 'run.log').read_text()


@needs_casa_without_casaconfig
def test_casa_6_4_and_6_5_without_measures_data_say_where_they_look(tmp_path):
    done = run_loading_modular_casa(
        'sys.modules["casadata"] = None\ntry:\n    s.load_casa(logfile="run.log")\n    print("LOADED")\n'
        'except s.ReprocessingError as error:\n    print(error)\n', cwd=tmp_path, home=tmp_path)
    assert done.stdout.startswith('CASA failed to import in this Python'), done.stdout + done.stderr
    assert done.stdout.strip().endswith('the rundata of ~/.casa/config.py: install casadata ("pip install casadata")')


@pytest.mark.parametrize('argv, says', [
    (['--image', '--cell', '-1arcsec'], 'argument --cell: cell "-1arcsec" must be positive'),
    (['--image', '--uvrange', '-5m'], 'argument --uvrange: uvrange "-5m" is not CASA uv-range syntax'),
    (['--image', '--spw', '25,27,25'], 'argument --spw: spw "25,27,25" names spw 25 more than once'),
])
def test_values_are_judged_at_parse_time_in_words_about_the_value(argv, says, capsys):
    assert sfr.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith('ERROR: ' + says) and len(error.splitlines()) == 1, error
