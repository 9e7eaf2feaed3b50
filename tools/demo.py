"""The README's demo: simulate a small ALMA delivery and reprocess it the way a user would.

    make demo            (or: .venv/bin/python tools/demo.py)

The simulated delivery is made once and kept in demo/.simulated/; every run starts from a fresh
copy in demo/calibrated_final/, so running the demo again is quick and never trips over the
outputs of the previous run.
"""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'tests' / 'support'))
sys.path.insert(0, str(REPO))

from simulate_delivery import cached_delivery, copy_delivery  # noqa: E402
from scriptForReprocessing import native_output_into  # noqa: E402

DEMO = REPO / 'demo'
DELIVERY_SETTINGS = dict(n_ebs=2, spw_ids=(25, 27), nchan=64, n_antennas=12)
# Every action that works without the pipeline, in one run.
ACTIONS = ['--contsub_fast', '--image', '--calibrated_final', '--calibrated_final_line']


def main():
    print('Simulating the demo delivery (once; cached in %s)' % (DEMO / '.simulated'), flush=True)
    # What CASA's C++ prints while simulating goes to a file, as the script keeps it in its console log:
    # casadata's leap-second table is older than the simulated dates, so CASA says three SEVERE lines
    # ("Leap second table TAI_UTC seems out-of-date") that mean times could be off by 1 s: harmless here.
    (DEMO / '.simulated').mkdir(parents=True, exist_ok=True)
    said = DEMO / '.simulated' / 'casa-output.txt'
    with native_output_into(said):
        source = Path(cached_delivery(DEMO / '.simulated', **DELIVERY_SETTINGS))
    if 'TAI_UTC seems out-of-date' in (said.read_text(errors='replace') if said.is_file() else ''):
        print('  (CASA said its leap-second table is out of date: times could be off by 1 s, which does not '
              'matter for this simulated data; CASA\'s messages are in %s)' % said, flush=True)
    delivery = DEMO / 'calibrated_final'
    if delivery.exists():
        subprocess.run(['rm', '-rf', str(delivery)], check=True)
    copy_delivery(source, delivery)
    (delivery / 'truth.json').unlink()
    script = delivery / 'scriptForReprocessing.py'
    script.write_bytes((REPO / 'scriptForReprocessing.py').read_bytes())
    command = [sys.executable, script.name] + ACTIONS
    print('\n$ cd %s\n$ %s\n' % (delivery, ' '.join(['python'] + command[1:])), flush=True)
    status = subprocess.run(command, cwd=str(delivery)).returncode
    print('\nWhat the run made (in %s):' % delivery)
    for path in sorted(delivery.rglob('*')):
        relative = path.relative_to(delivery)
        if path.is_dir() and (path.suffix == '.ms' or path.suffix in ('.image', '.pbcor', '.pb')) \
                and relative.parts[0] != 'working_reprocess':
            print('  %s' % relative)
        elif path.suffix in ('.fits', '.png', '.html') and 'staging' not in relative.parts:
            print('  %s' % relative)
    return status


if __name__ == '__main__':
    sys.exit(main())
