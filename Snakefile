# unireg cohort workflow: see README.md ("Cohort workflow"). All logic lives in workflow/.
include: "workflow/Snakefile"


# The default target (Snakemake takes it from this file, not from included ones): every
# subject's propagated labels and metrics, and the cohort report. Listing the per-subject files
# here means a subject whose outputs were deleted is redone, and only that subject.
rule all:
    default_target: True
    input:
        lambda w: expand(rules.propagate.output.labels, subject=subjects()),
        lambda w: expand(rules.metrics.output.tsv, subject=subjects()),
        rules.report.output.html,
