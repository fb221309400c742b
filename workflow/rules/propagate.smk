# Atlas labels -> subject's native (converted NIfTI) grid, composing affine and displacement.


rule propagate:
    input:
        native=rules.convert.output.image,
        affine=rules.preprocess.output.affine,
        displacement=rules.register.output.displacement,
        atlas_labels=f"{ATLAS_DIR}/atlas_labels.nii.gz",
        table=f"{ATLAS_DIR}/atlas_labels.tsv",
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
    shell:
        "{params.unireg} propagate --atlas-labels {input.atlas_labels} --native {input.native} --affine {input.affine} "
        "--displacement {input.displacement} --subject {wildcards.subject} --table {input.table} "
        "--out {output.labels} > {log} 2>&1"
