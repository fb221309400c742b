# Atlas labels -> subject's native (converted NIfTI) grid, composing affine and displacement. With an
# atlas set the fused labels are already on the preprocessed grid: the affine alone brings them home.

# what the registration stage left for this rule: the fused labels, or the atlas's labels + the field
REGISTERED = (
    {"atlas_labels": rules.segment.output.labels}
    if ATLAS_SET
    else {"atlas_labels": f"{ATLAS_DIR}/atlas_labels.nii.gz", "displacement": rules.register.output.displacement}
)


rule propagate:
    input:
        **REGISTERED,
        native=rules.convert.output.image,
        affine=rules.preprocess.output.affine,
        table=LABEL_TABLE,
    output:
        labels=FILES["labels"],
        table=FILES["labels_tsv"],
    log:
        log("propagate"),
    benchmark:
        bench("propagate")
    conda:
        "../../envs/preprocess.yaml"
    params:
        unireg=UNIREG,
        displacement=lambda w, input: f"--displacement {input.displacement}" if "displacement" in input.keys() else "",
    shell:
        "{params.unireg} propagate --atlas-labels {input.atlas_labels} --native {input.native} --affine {input.affine} "
        "{params.displacement} --subject {wildcards.subject} --table {input.table} "
        "--out {output.labels} > {log} 2>&1"
