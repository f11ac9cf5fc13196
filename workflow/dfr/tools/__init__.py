"""Developer tools that no rule calls: the benchmark (``python -m dfr.tools.bench``), the full-size rehearsal
(``python -m dfr.tools.rehearsal``) and the SLURM plan check (``python -m dfr.tools.slurm_plan``)."""
