# Reorient, brain-extract, normalise and affinely align each subject to the atlas.


rule atlas:
    output:
        image=f"{DEFAULT_ATLAS_DIR}/atlas.nii.gz",
        labels=f"{DEFAULT_ATLAS_DIR}/atlas_labels.nii.gz",
        table=f"{DEFAULT_ATLAS_DIR}/atlas_labels.tsv",
    log:
        log("atlas", "atlas"),
    benchmark:
        bench("atlas", "atlas")
    params:
        unireg=UNIREG,
        out=lambda w, output: Path(output.image).parent,
        spacing=config["atlas_spacing"],
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "{params.unireg} atlas prepare --out {params.out} --spacing {params.spacing} > {log} 2>&1"


rule preprocess:
    input:
        image=rules.convert.output.image,
        atlas=f"{ATLAS_DIR}/atlas.nii.gz",
    output:
        image=f"{RESULTS}/sub-{{subject}}/preproc/preproc.nii.gz",
        mask=f"{RESULTS}/sub-{{subject}}/preproc/brainmask.nii.gz",
        affine=f"{RESULTS}/sub-{{subject}}/preproc/affine.txt",
        info=f"{RESULTS}/sub-{{subject}}/preproc/preprocess.json",
    log:
        log("preprocess"),
    benchmark:
        bench("preprocess")
    threads: 2
    resources:
        mem_mb=4000,
    params:
        unireg=UNIREG,
        atlas=lambda w, input: Path(input.atlas).parent,
        out=lambda w, output: Path(output.image).parent,
        bet="" if config["preprocess"]["brain_extraction"] else "--no-brain-extraction",
        similarity=config["preprocess"]["similarity"],
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "{params.unireg} preprocess --image {input.image} --atlas {params.atlas} --out {params.out} "
        "--subject {wildcards.subject} --similarity {params.similarity} {params.bet} > {log} 2>&1"
