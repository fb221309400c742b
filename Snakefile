# unireg cohort workflow: see README.md ("Cohort workflow"). All logic lives in workflow/.
include: "workflow/Snakefile"
