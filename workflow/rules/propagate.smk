# Atlas labels -> subject's native (converted NIfTI) grid, composing affine and displacement. With an
# atlas set the fused labels are already on the preprocessed grid: the affine alone brings them home.
# One job per batch.

# the GPU stage this rule follows, and what it left for each member: the fused labels, or the
# atlas's labels + the member's displacement
GPU_STAGE = "segment" if ATLAS_SET else "register"
REGISTERED = (
    {"atlas_labels": FILES["warped_labels"]}
    if ATLAS_SET
    else {"atlas_labels": f"{ATLAS_DIR}/atlas_labels.nii.gz", "displacement": FILES["displacement"]}
)


rule propagate:
    input:
        after=ledger(GPU_STAGE),
        table=LABEL_TABLE,
    output:
        ledger=ledger("propagate"),
    log:
        batch_log("propagate"),
    benchmark:
        bench("propagate")
    conda:
        "../../envs/preprocess.yaml"
    params:
        **batch_params(
            "propagate",
            inputs=[*REGISTERED.values(), FILES["image"], FILES["affine"], LABEL_TABLE],
            outputs=[FILES["labels"], FILES["labels_tsv"]],
            after=GPU_STAGE,
        ),
        unireg=UNIREG,
        atlas_labels=template(REGISTERED["atlas_labels"]),
        displacement=template(f"--displacement {REGISTERED['displacement']}" if "displacement" in REGISTERED else ""),
        native=template(FILES["image"]),
        affine=template(FILES["affine"]),
        labels=template(FILES["labels"]),
    shell:
        "{params.unireg} batch {params.options} -- propagate --atlas-labels {params.atlas_labels} "
        "--native {params.native} --affine {params.affine} {params.displacement} --subject {{subject}} "
        "--table {input.table} --out {params.labels} > {log} 2>&1"
