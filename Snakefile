# unireg cohort workflow: see README.md ("Cohort workflow"). All logic lives in workflow/.
include: "workflow/Snakefile"


# The default target (Snakemake takes it from this file, not from included ones): every batch's
# metrics, and the cohort report. A subject whose outputs were deleted is redone, and only that
# subject: its batch's jobs rerun (unireg.batch.dag_state) and skip the members that are up to date.
rule all:
    default_target: True
    input:
        all_ledgers("metrics"),
        rules.report.output.html,
