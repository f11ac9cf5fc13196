"""Deep Feature Reconstruction (DFR) for unsupervised industrial anomaly detection.

One module per pipeline stage; the Snakemake rules in ``workflow/rules`` call them through
:mod:`dfr.cli`. Data flows one way::

    images -> features.h5 -> (pca.json) -> model.pt -> maps.h5 -> scores.csv -> metrics.json -> tables
"""

__version__ = "0.1.0"
