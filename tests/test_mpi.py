"""Running on several processes with MPI: "mpirun -n 3 python scriptForReprocessing.py ..." (modular CASA).

What a user sees, on real CASA with Open MPI on this machine (loopback and shared memory only):
  * rank 0 drives the run and says so in its environment line; ranks 1 and 2 become casampi servers
    and never run the steps (one lock, one journal, one set of outputs, one CASA log);
  * --contsub_fast sends one execution block to each server, and the line MSes are identical to a
    serial run's; pipeline-free cube imaging runs tclean with parallel=True, and the cube's peak is
    the serial run's within the noise;
  * errors (on rank 0 or in a server's execution block) stop the servers, and mpirun exits with the
    run's status instead of hanging; a usage error is printed once, not once per rank.
The MPI tests skip when mpirun, casampi or mpi4py is not installed.  Without MPI nothing changes:
the serial runs here are the same script without mpirun.
"""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import scriptForReprocessing as sfr
from conftest import SCRIPT, run_command, user_ms_digests

MPIRUN = shutil.which('mpirun')
HAVE_CASAMPI = all(importlib.util.find_spec(name) is not None for name in ('casampi', 'mpi4py'))
requires_mpi = pytest.mark.skipif(not (MPIRUN and HAVE_CASAMPI),
                                  reason='needs Open MPI (mpirun) and casampi + mpi4py (make setup-mpi)')

RANKS = 3
TWO_EBS = dict(n_ebs=2)  # as in test_contsub_fast: the simulated delivery is shared
CENTRED = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.2, n_ebs=2, with_line_ms=True)  # test_image's


def loopback_environment():
    """Open MPI on this machine only: shared memory between the ranks, loopback for the launcher."""
    version = subprocess.run([MPIRUN, '--version'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True).stdout
    major = re.search(r'(\d+)\.\d+', version)
    shared_memory = 'sm' if major and int(major.group(1)) >= 5 else 'vader'
    return {'OMPI_MCA_btl': 'self,' + shared_memory, 'OMPI_MCA_btl_tcp_if_include': 'lo',
            'OMPI_MCA_oob_tcp_if_include': 'lo', 'OMPI_MCA_rmaps_base_oversubscribe': '1',
            'OMPI_ALLOW_RUN_AS_ROOT': '1', 'OMPI_ALLOW_RUN_AS_ROOT_CONFIRM': '1'}


def mpirun(*args, cwd, ranks=RANKS, program=SCRIPT, timeout=900):
    """mpirun -n RANKS python program args..., in cwd (the test fails, not hangs, if mpirun never exits)."""
    command = [MPIRUN, '-n', str(ranks), sys.executable, str(program)] + [str(a) for a in args]
    return run_command(command, cwd=cwd, env=loopback_environment(), timeout=timeout)


def read_column(casa, ms, column):
    table = casa.casatools.table()
    table.open(str(ms))
    try:
        return table.getcol(column)
    finally:
        table.close()


def line_mses(delivery):
    return sorted(p.name for p in (Path(delivery) / 'measurement_sets').glob('uid*_targets_line.ms'))


def run_files(delivery):
    """What a run leaves in the delivery's top directory besides the data (lock, journal, partial outputs)."""
    return sorted(p.name for p in Path(delivery).iterdir() if p.name.startswith('.'))


def casa_logs(delivery):
    """The run's CASA logs (not the console logs of what CASA's C++ prints beside them)."""
    logs = (Path(delivery) / sfr.WORK_DIR_NAME / 'logs').glob('casa-*.log')
    return sorted(log for log in logs if not log.name.startswith('casa-console-'))


# ---------------------------------------------------------------------------------------------
# --contsub_fast: one execution block per MPI server, the serial result exactly
# ---------------------------------------------------------------------------------------------

@requires_mpi
@pytest.mark.mpi
def test_contsub_fast_on_three_ranks_sends_one_eb_per_server_and_matches_the_serial_run(
        delivery_factory, run_script, casa):
    serial, parallel = delivery_factory(**TWO_EBS), delivery_factory(**TWO_EBS)
    assert run_script('--contsub_fast', '--jobs', '1', delivery=serial).returncode == 0
    before = user_ms_digests(parallel)

    done = mpirun('--contsub_fast', cwd=parallel)

    assert done.returncode == 0, done.stdout + done.stderr
    assert 'MPI: 3 ranks (rank 0 drives, 2 casampi servers)' in done.stdout
    assert done.stdout.count('Environment: ') == 1 and done.stdout.count('Done.') == 1  # only rank 0 runs
    servers = set(re.findall(r'\] on MPI server (\d)', done.stdout))
    assert servers == {'1', '2'}, done.stdout
    assert len(re.findall(r'\] continuum subtracted in ', done.stdout)) == 2
    assert line_mses(serial) == line_mses(parallel) and len(line_mses(parallel)) == 2
    for name in line_mses(serial):
        for column in ('DATA', 'FLAG', 'WEIGHT', 'TIME', 'ANTENNA1', 'ANTENNA2', 'DATA_DESC_ID', 'FIELD_ID'):
            assert numpy.array_equal(read_column(casa, Path(serial) / 'measurement_sets' / name, column),
                                     read_column(casa, Path(parallel) / 'measurement_sets' / name, column)), column
    after = user_ms_digests(parallel)
    assert {name: after[name] for name in before} == before  # the user's uid*_targets.ms: byte-identical
    # one unified CASA log: the servers' uvcontsub calls are in the run's log, none in the user's directory
    logs = casa_logs(parallel)
    assert len(logs) == 1
    text = logs[0].read_text(errors='replace')
    assert 'uvcontsub::::casa::MPIServer-1' in text and 'uvcontsub::::casa::MPIServer-2' in text
    assert not list(Path(parallel).glob('casa-*.log'))
    assert 'MPIServer' not in done.stderr  # what the servers' C++ prints goes to the console log, as rank 0's
    assert run_files(parallel) == [sfr.LOCK_NAME]  # no journal, no partial outputs left behind


# ---------------------------------------------------------------------------------------------
# pipeline-free imaging: tclean parallel=True for cubes, same cube within the noise
# ---------------------------------------------------------------------------------------------

def cube_peak_and_rms(casa, images):
    fits = sorted(Path(images).glob('*.cube.*pbcor.fits'))
    assert len(fits) == 1, sorted(p.name for p in Path(images).iterdir())
    image = casa.casatools.image()
    image.open(str(fits[0]))
    try:
        pixels = image.getchunk(dropdeg=True)
    finally:
        image.close()
    finite = pixels[numpy.isfinite(pixels)]
    return float(finite.max()), float(numpy.std(finite))


@requires_mpi
@pytest.mark.mpi
def test_cube_imaging_on_three_ranks_runs_tclean_in_parallel_and_matches_the_serial_cube(
        delivery_factory, run_script, casa):
    serial, parallel = delivery_factory(**CENTRED), delivery_factory(**CENTRED)
    flags = ('--image', '--specmodes', 'cube', '--spw', '25')
    assert run_script(*flags, delivery=serial, timeout=900).returncode == 0

    done = mpirun(*flags, cwd=parallel)

    assert done.returncode == 0, done.stdout + done.stderr
    assert 'MPI: 3 ranks' in done.stdout
    log = casa_logs(parallel)[0].read_text(errors='replace')
    assert re.search(r"tclean\(.*specmode='cube'.*parallel=True", log), 'the cube was not made with parallel=True'
    assert 'MPIServer-1' in log and 'MPIServer-2' in log
    serial_peak, serial_rms = cube_peak_and_rms(casa, Path(serial) / 'images')
    peak, rms = cube_peak_and_rms(casa, Path(parallel) / 'images')
    assert abs(peak - serial_peak) < serial_rms, (peak, serial_peak, serial_rms)
    assert abs(rms - serial_rms) < 0.1 * serial_rms
    assert run_files(parallel) == [sfr.LOCK_NAME]


def test_tclean_goes_parallel_for_cubes_and_mosaics_only_and_only_under_mpi(monkeypatch):
    class Job(object):
        def __init__(self, spectral, gridder):
            self.spectral, self.gridder = spectral, gridder
    cube, mosaic, single = Job({'nchan': 10}, 'standard'), Job(None, 'mosaic'), Job(None, 'standard')
    assert not any(sfr.tclean_parallel(job) for job in (cube, mosaic, single))  # this process: no MPI
    monkeypatch.setattr(sfr, 'mpi_servers_available', lambda: True)
    assert [sfr.tclean_parallel(job) for job in (cube, mosaic, single)] == [True, True, False]


# ---------------------------------------------------------------------------------------------
# errors: the servers stop, mpirun exits with the run's status, messages appear once
# ---------------------------------------------------------------------------------------------

@requires_mpi
@pytest.mark.mpi
def test_an_error_on_rank_0_stops_the_servers_and_mpirun_exits_with_status_1(delivery_factory):
    delivery = delivery_factory(**TWO_EBS)
    (Path(delivery) / 'caltables' / 'cont.dat').unlink()

    done = mpirun('--contsub_fast', cwd=delivery, timeout=300)

    assert done.returncode == 1
    assert done.stderr.count('ERROR: ') == 1 and 'cont.dat is missing' in done.stderr
    assert run_files(delivery) == []  # failed while planning: no lock taken, nothing written


@requires_mpi
@pytest.mark.mpi
def test_a_usage_error_under_mpirun_is_printed_once_and_a_dry_run_changes_nothing(delivery_factory):
    delivery = delivery_factory(**TWO_EBS)
    wrong = mpirun('--contsub_fast', '--no-such-flag', cwd=delivery, timeout=120)
    assert wrong.returncode == 2 and wrong.stderr.count('ERROR: unrecognized arguments') == 1

    dry = mpirun('--contsub_fast', '--dry-run', cwd=delivery, timeout=300)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert dry.stdout.count('Dry run: nothing was changed.') == 1 and 'MPI: 3 ranks' in dry.stdout
    assert run_files(delivery) == [] and not (Path(delivery) / sfr.WORK_DIR_NAME).exists()


SERVER_FAILURE_DRIVER = '''
import sys
sys.path.insert(0, {repo!r})
import scriptForReprocessing as sfr

def main():
    with sfr.casa_mpi_job():  # ranks > 0 serve in here
        servers = sfr.MpiEbServers.connect()
        task = {{'function': 'subtract_continuum', 'eb': 'uid___missing', 'arguments': {{
            'ms': {missing!r}, 'output': {output!r}, 'field': '0', 'spw': '25', 'fitspec': {{}}}}}}
        try:
            servers.run([task], casa=None)
        except sfr.ReprocessingError as error:
            print('ERROR: %s' % error, flush=True)
            return 1
    return 0

sys.exit(main())
'''


@requires_mpi
@pytest.mark.mpi
def test_a_failing_execution_block_on_a_server_is_reported_and_mpirun_exits(tmp_path):
    driver = tmp_path / 'driver.py'
    driver.write_text(SERVER_FAILURE_DRIVER.format(repo=str(SCRIPT.parent), missing=str(tmp_path / 'missing.ms'),
                                                   output=str(tmp_path / 'out.ms')))

    done = mpirun(cwd=tmp_path, program=driver, timeout=300)

    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r'ERROR: uvcontsub failed on missing.ms .*your MS was not changed', done.stdout), done.stdout
    assert not (tmp_path / 'out.ms').exists()


def test_mpirun_without_casampi_says_what_to_install(monkeypatch):
    monkeypatch.setenv('OMPI_COMM_WORLD_SIZE', '3')
    monkeypatch.setenv('OMPI_COMM_WORLD_RANK', '0')
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'casampi' else real_find_spec(name, *a))
    assert sfr.mpi_launch() == (3, 0)
    with pytest.raises(sfr.ReprocessingError) as raised:
        with sfr.casa_mpi_job():
            pass
    message = str(raised.value)
    # with mpi4py missing as well, the message names both packages
    assert 'started by mpirun with 3 processes, but casampi' in message and 'not installed' in message
    assert 'pip install casampi mpi4py' in message and 'or run without mpirun' in message


def test_without_mpi_nothing_changes(monkeypatch):
    # whatever launched this test (mpirun, srun): the launcher's variables are what mpi_launch reads
    for variable in ('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK', 'PMI_SIZE', 'PMI_RANK'):
        monkeypatch.delenv(variable, raising=False)
    assert sfr.mpi_launch() == (1, 0)
    with sfr.casa_mpi_job():
        assert sfr.mpi_info() == sfr.MpiInfo(1, 0, True)
        assert not sfr.mpi_servers_available()
        assert 'MPI: none' in sfr.describe_environment()
