"""The script as users of monolithic CASA run it: ``casa -c scriptForReprocessing.py ...``.

CASA's own shell is on PyPI as casashell (same release numbers as casatools); ``python -m casashell
--nologger --nogui -c SCRIPT ARGS`` is what ``casa -c`` runs.  It reads a config file like
monolithic CASA's ~/.casa/config.py: here one in the test's folder points the measures at casadata
and switches auto-updates off (with them on, casaconfig checks the network first, up to 3 s a check
where it is blocked; with them off casaconfig 1.5 makes no check, and skipnetworkcheck is there in
case), and HOME is a fresh folder, so nothing of the machine's ~/.casa is used (casashell writes its
IPython profile and history into HOME/.casa/ipython/ even so, matplotlib its caches into HOME/.cache
and HOME/.config).  Under casashell the script sees a monolithic CASA ('casashell' in sys.modules):
CASA is configured by the shell, tasks are globals, and the exit status comes through sys.exit.
"""
import importlib.util
import re
import subprocess
import sys

import pytest

from conftest import SCRIPT, error_lines, user_ms_digests

pytestmark = pytest.mark.skipif(importlib.util.find_spec('casashell') is None,
                                reason='casashell (CASA\'s shell, "pip install casashell") is not installed')

TWO_EBS = dict(n_ebs=2)  # as in test_contsub_fast: the simulated delivery is shared


@pytest.fixture(scope='module')
def shell_setup(tmp_path_factory):
    """(config file, HOME) for the CASA shell, both in the test run's temporary folder."""
    import casadata
    folder = tmp_path_factory.mktemp('casashell')
    home = folder / 'home'
    home.mkdir()
    config = folder / 'config.py'
    config.write_text('measurespath = %r\ndatapath = [%r]\nmeasures_auto_update = False\n'
                      'data_auto_update = False\nskipnetworkcheck = True\n' % (casadata.datapath, casadata.datapath))
    return config, home


@pytest.fixture(scope='module')
def casa_shell(shell_setup):
    """run(*args, cwd) -> CompletedProcess of ``casa -c scriptForReprocessing.py args`` in cwd."""
    config, home = shell_setup

    def run(*args, cwd):
        command = [sys.executable, '-m', 'casashell', '--nologger', '--nogui', '--configfile', str(config),
                   '-c', str(SCRIPT)] + [str(a) for a in args]
        return subprocess.run(command, cwd=str(cwd), env={'HOME': str(home), 'PATH': '/usr/bin:/bin'},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    return run


def test_help_shows_the_options(casa_shell, shell_setup, tmp_path):
    config, home = shell_setup
    done = casa_shell('--help', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'usage: scriptForReprocessing.py' in done.stdout and '--contsub_fast' in done.stdout
    assert 'CASA 6.' in done.stdout, 'not run by the CASA shell'
    assert 'Using user configuration file %s' % config in done.stdout, 'the shell did not read our config file'
    assert (home / '.casa' / 'ipython').is_dir(), 'the shell did not use the temporary HOME'


@pytest.mark.parametrize('args, error', [
    (('--image', '--robust', '9'), 'ERROR: argument --robust: robust must be between -2 and 2 (Briggs weighting), '
                                   'got 9 — run "scriptForReprocessing.py --help" for the options'),
    # CASA's own flags after "-c SCRIPT" are the script's arguments: the shell passes them on untouched.
    (('--nologger', '--calibrated_final'), 'ERROR: unrecognized arguments: --nologger — '
                                           'run "scriptForReprocessing.py --help" for the options'),
], ids=['bad-robust', 'casa-flag-after-c'])
def test_a_usage_error_is_one_line_and_exit_status_2(casa_shell, tmp_path, args, error):
    done = casa_shell(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert error_lines(done.stderr) == [error]
    assert 'Traceback' not in done.stderr


def test_a_failed_run_is_one_line_and_exit_status_1(casa_shell, tmp_path):
    done = casa_shell('--delivery', tmp_path, '--calibrated_final', cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and errors[0].startswith('ERROR: no measurement_sets/ directory in '), done.stderr
    assert 'Traceback' not in done.stderr


def test_calibrated_final_under_the_casa_shell(casa_shell, delivery_factory):
    delivery = delivery_factory(**TWO_EBS)
    before = user_ms_digests(delivery)
    done = casa_shell('--calibrated_final', cwd=delivery)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert re.search(r'Environment: CASA 6\.[0-9.-]+ \(monolithic\)', done.stdout), done.stdout
    assert (delivery / 'measurement_sets' / 'calibrated_final.ms' / 'table.dat').is_file()
    assert user_ms_digests(delivery) == before, 'concat wrote into a user MS'
    assert 'Done.' in done.stdout and not error_lines(done.stderr)


def test_contsub_fast_dry_run_and_run_under_the_casa_shell(casa_shell, delivery_factory):
    delivery = delivery_factory(**TWO_EBS)
    before = user_ms_digests(delivery)
    dry = casa_shell('--contsub_fast', '--dry-run', cwd=delivery)
    assert dry.returncode == 0, dry.stderr
    assert 'Dry run: nothing was changed.' in dry.stdout
    assert not list((delivery / 'measurement_sets').glob('*_line.ms'))
    earlier = set(delivery.glob('casa-*.log'))  # the dry run's (a dry run records nothing to clean up)
    done = casa_shell('--contsub_fast', '--jobs', '2', cwd=delivery)  # workers: the script finds its own path
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert len(list((delivery / 'measurement_sets').glob('*_targets_line.ms'))) == 2
    assert {name: digests for name, digests in user_ms_digests(delivery).items() if name in before} == before
    logs = sorted(set(delivery.glob('casa-*.log')) - earlier)  # monolithic CASA logs where it starts
    assert logs, 'no CASA log in the delivery: was this monolithic CASA?'
    cleaned = casa_shell('--cleanup', cwd=delivery)
    assert cleaned.returncode == 0, cleaned.stderr
    assert not [log for log in logs if log.exists()], 'the CASA logs of the runs were not cleaned up'
