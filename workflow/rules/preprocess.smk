# Reorient, brain-extract, normalise and affinely align each subject to the atlas (one job per batch).


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
        after=ledger("convert"),
        atlas=f"{ATLAS_DIR}/atlas.nii.gz",
    output:
        ledger=ledger("preprocess"),
    log:
        batch_log("preprocess"),
    benchmark:
        bench("preprocess")
    conda:
        "../../envs/preprocess.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,  # the one place of this request (SLURM too)
    params:
        **batch_params(
            "preprocess",
            inputs=[FILES["image"], f"{ATLAS_DIR}/atlas.nii.gz"],
            outputs=[FILES[k] for k in ("preproc", "mask", "affine", "preproc_json")],
            after="convert",
        ),
        unireg=UNIREG,
        image=template(FILES["image"]),
        atlas=lambda w, input: Path(input.atlas).parent,
        out=template(Path(FILES["preproc"]).parent),
        bet="" if config["preprocess"]["brain_extraction"] else "--no-brain-extraction",
        similarity=config["preprocess"]["similarity"],
        space=SPACE,
    shell:
        "{params.unireg} batch {params.options} -- preprocess --image {params.image} --atlas {params.atlas} "
        "--out {params.out} --subject {{subject}} --space {params.space} --similarity {params.similarity} "
        "{params.bet} > {log} 2>&1"
