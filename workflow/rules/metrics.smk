# Per-subject label overlap between propagated atlas labels and reference labels (where they exist).


def reference_labels(wildcards):
    """The subject's reference label map: the cohort's `reference` column or reference_labels folder."""
    checkpoints.index.get()
    with open(f"{RESULTS}/manifest.tsv") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["subject"] == wildcards.subject and row.get("reference"):
                return [row["reference"]]
    folder = config["reference_labels"]
    if folder and Path(folder, f"sub-{wildcards.subject}_labels.nii.gz").is_file():
        return [str(Path(folder, f"sub-{wildcards.subject}_labels.nii.gz"))]
    return []


rule metrics:
    input:
        labels=rules.propagate.output.labels,
        reference=reference_labels,
        table=f"{ATLAS_DIR}/atlas_labels.tsv",
        registration=rules.register.output.info,
    output:
        tsv=f"{RESULTS}/sub-{{subject}}/sub-{{subject}}_metrics.tsv",
    log:
        log("metrics"),
    benchmark:
        bench("metrics")
    params:
        reference=lambda w, input: f"--reference {input.reference}" if input.reference else "",
    conda:
        "../../envs/report.yaml"
    shell:
        "{UNIREG} metrics --labels {input.labels} {params.reference} --table {input.table} "
        "--registration {input.registration} --subject {wildcards.subject} --out {output.tsv} > {log} 2>&1"
