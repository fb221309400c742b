# Reorient, brain-extract, normalise and affinely align each subject to the atlas.


rule atlas:
    output:
        image=f"{BUILTIN_ATLAS_DIR}/atlas.nii.gz",
        labels=f"{BUILTIN_ATLAS_DIR}/atlas_labels.nii.gz",
        table=f"{BUILTIN_ATLAS_DIR}/atlas_labels.tsv",
        mask=f"{BUILTIN_ATLAS_DIR}/atlas_brainmask.nii.gz",
    log:
        log("atlas", "{atlas_name}/atlas"),  # one level down: the report reads logs/<rule>/<subject>.log
    benchmark:
        bench("atlas", "{atlas_name}")
    conda:
        "../../envs/preprocess.yaml"
    params:
        unireg=UNIREG,
        out=lambda w, output: Path(output.image).parent,
        spacing=config["atlas_spacing"],
    shell:
        "{params.unireg} atlas prepare --name {wildcards.atlas_name} --out {params.out} --spacing {params.spacing} > {log} 2>&1"


rule preprocess:
    input:
        image=rules.convert.output.image,
        atlas=f"{ATLAS_DIR}/atlas.nii.gz",
    output:
        image=FILES["preproc"],
        mask=FILES["mask"],
        affine=FILES["affine"],
        info=FILES["preproc_json"],
    log:
        log("preprocess"),
    benchmark:
        bench("preprocess")
    conda:
        "../../envs/preprocess.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,  # the one place of this request (SLURM too)
    params:
        unireg=UNIREG,
        atlas=lambda w, input: Path(input.atlas).parent,
        out=lambda w, output: Path(output.image).parent,
        bet="" if config["preprocess"]["brain_extraction"] else "--no-brain-extraction",
        similarity=config["preprocess"]["similarity"],
        space=SPACE,
    shell:
        "{params.unireg} preprocess --image {input.image} --atlas {params.atlas} --out {params.out} "
        "--subject {wildcards.subject} --space {params.space} --similarity {params.similarity} {params.bet} > {log} 2>&1"
