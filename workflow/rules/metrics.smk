# Per-subject label overlap between propagated atlas labels and reference labels (where they exist).


rule metrics:
    input:
        labels=rules.propagate.output.labels,
        manifest=f"{RESULTS}/manifest.tsv",
        table=LABEL_TABLE,
        registration=rules.segment.output.info if ATLAS_SET else rules.register.output.info,
    output:
        tsv=FILES["metrics"],
    log:
        log("metrics"),
    benchmark:
        bench("metrics")
    conda:
        "../../envs/report.yaml"
    params:
        unireg=UNIREG,
        reference_dir=(f"--reference-dir {config['reference_labels']}" if config["reference_labels"] else ""),
    shell:
        "{params.unireg} metrics --labels {input.labels} --manifest {input.manifest} {params.reference_dir} "
        "--table {input.table} "
        "--registration {input.registration} --subject {wildcards.subject} --out {output.tsv} > {log} 2>&1"
