"""What one image takes while tclean makes it, from its job alone (metadata): the memory of the process
that makes it and a rough time (pure: no CASA).

Measured with bench/bench_cube_memory.py (CASA 6.7.0-31 modular, one process making the tool's cube job:
dirty image, threshold, clean with auto-multithresh; peak RSS by getrusage; simulated delivery of 1 EB,
16 antennas, one spw of 256 channels; machine of 2 cores shared with other jobs, load average in brackets):

    imsize x nchan   cube (4 B/pixel)   base    peak    (peak - base) / cube   wall
    128 x 60           3.9 MB          0.36 GB  0.44 GB   21.3                  21 s (7)
    256 x 60          15.7 MB          0.36 GB  0.70 GB   21.7                  48 s (7-12)
    256 x 240         62.9 MB          0.36 GB  1.51 GB   18.3                 829 s (17)
    512 x 60          62.9 MB          0.36 GB  1.31 GB   15.1                 222 s (13-17)

A whole --image run of one 144x144 x 26 channel cube peaked at 0.47 GB (its largest process).

"base" is the process with CASA loaded and the measurement sets read.  tclean holds about 22 planes of
4 bytes per pixel and channel (image, residual, psf, model, pb, weight, sumwt, mask, the automask's
working images and the padded complex grids of the gridder), so the model is (the constants rounded up)

    memory = MEMORY_BASE + MEMORY_PLANES x imsize_x x imsize_y x channels x 4 bytes

A multi-term (mtmfs) image holds its planes once per Taylor term.  Under
MPI a cube's channels are shared by the servers (tclean parallel=True): each holds its share; the earlier
measurement (README, "One cube over several workers") fits: 509 channels of 144x144 on 2 servers, 0.89 GB
measured for the largest server, 1.01 GB by this model.  tclean splits a cube into sub-cubes when it does not fit
in the memory it sees (its log: nSubCubeFitInMemory), but it sees the whole machine's memory, not a
worker's share of it: several workers each making a large cube run out of memory together.

The time is rough: SECONDS_BASE + SECONDS_PER_PIXEL x pixels x channels, fitted to the first two runs; it
ignores
the amount of data (gridding grows with the visibilities) and the machine, and is meant for the order of
magnitude only.
"""

MEMORY_BASE = 500 * 1000 * 1000   # bytes: CASA loaded, the MSes read (0.36 GB measured; 0.47 GB for a whole run)
MEMORY_PLANES = 24                # 4-byte planes per pixel and channel held by tclean (15.1-21.7 measured)
SECONDS_BASE = 12.0               # the fit of the wall times above: 12 s + 9.2 microseconds per pixel-channel
SECONDS_PER_PIXEL = 9.2e-6


def job_channels(job, share=1):
    """Channels one process holds: the cube's, or its share of them under MPI (share = servers)."""
    channels = max(1, int(job.nchan or 1))
    return -(-channels // max(1, share))


def job_memory(job, share=1):
    """Bytes the process making this image (or its share of a cube) needs at its peak."""
    terms = max(1, int(job.nterms or 1)) if job.deconvolver == 'mtmfs' else 1
    return int(MEMORY_BASE + MEMORY_PLANES * 4 * job.imsize[0] * job.imsize[1] * job_channels(job, share) * terms)


def job_seconds(job):
    """A rough wall time of the image in one process (see the module's text for what it ignores)."""
    return SECONDS_BASE + SECONDS_PER_PIXEL * job.imsize[0] * job.imsize[1] * job_channels(job)
