"""The README's SLURM recipe against a real single-node Slurm (Debian's slurm-wlm + munge) started here.

What a user sees: sbatch of the job script the README shows (mpirun -n "$SLURM_NTASKS" python
scriptForReprocessing.py ...) runs the tool end to end; a job that reaches its time limit gets SIGTERM
first (KillWait before SIGKILL), so the tool stops with its one ERROR line and leaves nothing
half-written under a final name; the same job again finishes the work.  The daemons are stopped at the
end and no process of theirs is left.  Skips when slurm-wlm/munge are not installed or not root.
"""
import shutil
import sys
from pathlib import Path

import pytest

import scriptForReprocessing as sfr
from conftest import SCRIPT
from slurm_cluster import SlurmCluster
from test_mpi import HAVE_CASAMPI, line_mses, loopback_environment, run_files

TWO_EBS = dict(n_ebs=2)  # as test_mpi's: the simulated delivery is shared

# The README's job script ("A SLURM job"), modular CASA variant, with this machine's paths: the tool runs
# in the background so that the batch shell can pass Slurm's warning (SIGUSR1, --signal=B:USR1@...) on.
JOB_SCRIPT = '''#!/bin/bash
#SBATCH --job-name=reprocess-test
#SBATCH --nodes=1
#SBATCH --ntasks=2                 # rank 0 + 1 server
#SBATCH --time={minutes}
#SBATCH --output={output}
{warning}
set -euo pipefail
cd {delivery}
# a time limit sends SIGTERM to every process of the job, SIGKILL KillWait later: mpirun must give the
# ranks that time to stop cleanly (its default is 1 s before SIGKILL)
export OMPI_MCA_odls_base_sigkill_timeout=25
{launcher}{python} scriptForReprocessing.py {options} &
tool=$!
trap 'kill -USR1 "$tool"' USR1     # the warning before the time limit: the tool stops as for SIGTERM
status=0; wait "$tool" || status=$?
if [ "$status" -gt 128 ]; then status=0; wait "$tool" || status=$?; fi   # the trap ran: wait for the end
exit "$status"
'''
# Slurm sends the warning up to 60 s earlier than asked (its event resolution), so at 0-60 s of a 2-minute job
WARNING = '#SBATCH --signal=B:USR1@60'


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
    why = SlurmCluster.missing()
    if not why and not (shutil.which('mpirun') and HAVE_CASAMPI):
        why = 'needs Open MPI (mpirun) and casampi + mpi4py (make setup-mpi)'
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp('slurm'))
    with cluster:
        yield cluster
    left = cluster.leftovers()
    assert left == [], 'processes of the test Slurm are still running: %s' % [
        (pid, Path('/proc/%d/cmdline' % pid).read_bytes()[:200]) for pid in left]


MPIRUN = 'mpirun -n "$SLURM_NTASKS" '


def submit(slurm, delivery, *, minutes, options, env=None, launcher=MPIRUN, warning=''):
    shutil.copy(str(SCRIPT), str(Path(delivery) / SCRIPT.name))  # as a user copies it into calibrated_final
    output = Path(delivery).parent / ('job-%s.out' % Path(delivery).name)
    script = Path(delivery).parent / ('job-%s.sh' % Path(delivery).name)
    script.write_text(JOB_SCRIPT.format(minutes=minutes, output='%s.%%j' % output, delivery=delivery,
                                        python=sys.executable, options=options, launcher=launcher,
                                        warning=warning))
    environment = loopback_environment()
    environment.update(env or {})
    job = slurm.sbatch(script, env=environment, cwd=delivery)
    return job, Path('%s.%s' % (output, job))


@pytest.mark.mpi
def test_sbatch_of_the_readme_job_script_runs_the_tool_under_mpirun(slurm, delivery_factory):
    delivery = delivery_factory(**TWO_EBS)

    job, output = submit(slurm, delivery, minutes=15, options='--contsub_fast')

    assert slurm.wait(job) == 'COMPLETED', output.read_text()
    text = output.read_text()
    assert 'MPI: 2 ranks (rank 0 drives, 1 casampi servers)' in text, text
    assert text.count('Done.') == 1 and 'ERROR' not in text
    assert len(line_mses(delivery)) == 2
    assert run_files(delivery) == [sfr.LOCK_NAME]


# (name, launcher, warning, stopped by, final state, time limit in minutes)
TIME_LIMIT_CASES = [
    ('one process at the limit', '', '', 'SIGTERM', 'TIMEOUT', 1),
    # Under mpirun the limit's own SIGTERM loses the line (mpirun drops what ranks print after it gets
    # SIGTERM itself: measured, even a line printed at once), so the README's script asks for the warning.
    ('mpirun warned before the limit', MPIRUN, WARNING, 'SIGUSR1', 'FAILED', 2)]


@pytest.mark.mpi
def test_a_time_limit_stops_the_tool_with_one_line_and_the_same_job_again_finishes(slurm, delivery_factory):
    # Both cases' jobs run at once (the test Slurm has 4 CPUs for it): each waits at a pause for its time
    # limit, so together they take the longer limit, not the sum (CI: 117 s + 88 s one after the other).
    jobs = []
    for name, launcher, warning, stopped_by, state, minutes in TIME_LIMIT_CASES:
        delivery = delivery_factory(**TWO_EBS)
        # held after the line MSes are written, before any is published: the time limit (or its warning) comes there
        job, output = submit(slurm, delivery, minutes=minutes, options='--contsub_fast',
                             env={sfr.PAUSE_ENV: 'contsub-written'}, launcher=launcher, warning=warning)
        jobs.append((name, delivery, job, output, stopped_by, state))

    for name, delivery, job, output, stopped_by, state in jobs:
        assert slurm.wait(job, timeout=300) == state, (name, output.read_text())
        text = output.read_text()
        assert ('DUE TO TIME LIMIT' in text) == (state == 'TIMEOUT'), (name, text)
        errors = [line for line in text.splitlines() if line.startswith('ERROR: ')]
        assert len(errors) == 1 and ('(%s)' % stopped_by) in errors[0], (name, text)
        assert 'Traceback' not in text, name
        assert line_mses(delivery) == [], name  # nothing half-written under a final name
        marker = Path(delivery) / '.paused-at-contsub-written'  # the test's pause marker, not the tool's
        if marker.exists():  # (the warning may come before the pause: Slurm sends it up to 60 s early)
            marker.unlink()

    again = [(name, delivery) + submit(slurm, delivery, minutes=15, options='--contsub_fast')
             for name, delivery, _job, _output, _stopped_by, _state in jobs]
    for name, delivery, job, output in again:
        assert slurm.wait(job) == 'COMPLETED', (name, output.read_text())
        assert output.read_text().count('Done.') == 1, name
        assert len(line_mses(delivery)) == 2, name
        assert run_files(delivery) == [sfr.LOCK_NAME], name
