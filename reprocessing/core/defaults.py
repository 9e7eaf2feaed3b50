"""User-editable defaults: the block at the very top of the generated scriptForReprocessing.py.

Plain assignments only (the build checks); None leaves a choice to the heuristics.
"""



# ---------------------------------------------------------------------------
# User-editable defaults.  Edit them here, or override them on the command line.
# None leaves the choice to the pipeline's (or the CASA engine's) heuristics.
# ---------------------------------------------------------------------------
IMAGES_DIR = 'images'           # --image [DIR]
WEBLOG = 'latest'               # --weblog [NAME]
SPECMODES = ['mfs', 'cont', 'cube', 'repBW']
ROBUST = None                   # e.g. 0.5
UVTAPER = None                  # e.g. ['0.5arcsec']
UVRANGE = None                  # e.g. '>20klambda'
FIELD = None                    # e.g. 'IRAS_16293-2422'
SPW = None                      # e.g. '25,27' (cont.dat's ids: the first execution block's)
PHASECENTER = None              # e.g. 'ICRS 16:32:22.6 -24.28.33'
IMSIZE = None                   # e.g. [512, 512] or '0.3pb'
CELL = None                     # e.g. '0.05arcsec' or '3ppb'
NBINS = None                    # e.g. '25:2,*:4' (channel binning per spw)
START = None                    # e.g. '-20km/s' or '25:-20km/s,27:230.5GHz' (a cube's first channel)
WIDTH = None                    # e.g. '0.5km/s', '2MHz' or '2' (channels)
NCHAN = None                    # e.g. '120' or '25:120,27:60'
RESTFREQ = None                 # e.g. '25:230.538GHz' (default: the SOURCE table's, else the cube's centre)
OUTFRAME = None                 # LSRK (default), BARY, TOPO or SOURCE (ephemeris targets)
VELTYPE = None                  # radio (default) or optical
MOMENTS = None                  # e.g. '0,1,2,8': moment maps of every cube
BEAM = None                     # 'common', 'round' or e.g. '0.5arcsec'
MITIGATION = True               # False: skip hif_checkproductsize
MAXPRODUCTSIZE = None           # GB
MAXCUBESIZE = None              # GB
MAXCUBELIMIT = None             # GB
