# DFR: Deep Feature Reconstruction for unsupervised industrial anomaly detection. The workflow is
# workflow/Snakefile (the workflow catalog's standard layout); this file lets `snakemake` run from the root.
#
#   snakemake --cores all                                  # the paper's MVTec AD + VisA benchmark
#   snakemake --cores all --configfile config/demo.yaml    # offline demo on the synthetic dataset


include: "workflow/Snakefile"


# A default target set in an included file does not carry over to the including one: name it here.
rule default:
    default_target: True
    input:
        rules.all.input,
