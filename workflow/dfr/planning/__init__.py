"""The planning layer: what to compute, under which keys, where, and with which resources.

Torch-free and h5py-free (the Snakefile and every job's start-up import it): it imports only its own modules
and the package's leaves (:mod:`dfr.io`, :mod:`dfr.shapes`, :mod:`dfr.fileid`). In import order:
overrides → config → keys → layout → workload → plan → resources, with devices, fetches, runlock and failures
beside them.
"""
