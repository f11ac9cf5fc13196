# DFR: Deep Feature Reconstruction for unsupervised industrial anomaly detection.
#
#   snakemake --cores all                                  # the paper's MVTec AD + VisA benchmark
#   snakemake --cores all --configfile config/demo.yaml    # offline demo on the synthetic dataset
#
#   snakemake --cores all --configfile config/study-demo.yaml   # a study: variants of one config, compared
#   snakemake --report report.html [--configfile ...]          # an HTML report of the tables and figures
#
# Per category: dataset -> index -> features.h5 (train, test) -> split -> (pca.json) -> model.pt
#               -> maps.h5 -> scores.csv -> metrics.json, plots -> tables per dataset (-> a study's comparison).
from snakemake.utils import min_version

min_version("9.0")


# The default config applies only when no --configfile is given: a config file given on the command line
# replaces it (Snakemake would otherwise merge both, keeping the default's datasets).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/pca.smk"
include: "workflow/rules/cae.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/studies.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
