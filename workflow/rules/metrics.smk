# Per-subject label overlap between propagated atlas labels and reference labels (where they exist).
# One job per batch.

# the GPU stage's record of each member's registration (folding, QC)
REGISTRATION_RECORD = FILES["segment_json"] if ATLAS_SET else FILES["displacement_json"]


rule metrics:
    input:
        after=ledger("propagate"),
        manifest=f"{RESULTS}/manifest.tsv",
        table=LABEL_TABLE,
    output:
        ledger=ledger("metrics"),
    log:
        batch_log("metrics"),
    benchmark:
        bench("metrics")
    conda:
        "../../envs/report.yaml"
    params:
        **batch_params(
            "metrics",
            inputs=[FILES["labels"], f"{RESULTS}/manifest.tsv", LABEL_TABLE, REGISTRATION_RECORD],
            outputs=[FILES["metrics"]],
            after="propagate",
        ),
        unireg=UNIREG,
        labels=template(FILES["labels"]),
        registration=template(REGISTRATION_RECORD),
        metrics=template(FILES["metrics"]),
        reference_dir=(f"--reference-dir {config['reference_labels']}" if config["reference_labels"] else ""),
    shell:
        "{params.unireg} batch {params.options} -- metrics --labels {params.labels} --manifest {input.manifest} "
        "{params.reference_dir} --table {input.table} --registration {params.registration} "
        "--subject {{subject}} --out {params.metrics} > {log} 2>&1"
