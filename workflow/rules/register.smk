# UniReg deformable registration: atlas template (moving) onto each preprocessed subject (fixed).
# The GPU rule: asks SLURM for a GPU when register.gpu is true and then runs on the GPU the job was
# given (register.device: auto), failing clearly when none is visible; else it runs on CPU. One job
# per batch: torch is imported and the model loaded once, and the members stream through it.

ATLAS_FILES = {
    "atlas": f"{ATLAS_DIR}/atlas.nii.gz",
    "atlas_labels": f"{ATLAS_DIR}/atlas_labels.nii.gz",
    "atlas_mask": f"{ATLAS_DIR}/atlas_brainmask.nii.gz",
}


rule register:
    input:
        **ATLAS_FILES,
        after=ledger("preprocess"),
    output:
        ledger=ledger("register"),
    log:
        batch_log("register"),
    benchmark:
        bench("register")
    conda:
        "../../envs/register.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 12000 * attempt,  # the one place of this request (SLURM too)
        gpu=1 if USE_GPU else 0,
    params:
        **batch_params(
            "register",
            inputs=[FILES["preproc"], FILES["mask"], *ATLAS_FILES.values()],
            outputs=[FILES[k] for k in ("displacement", "warped", "displacement_json")],
            after="preprocess",
        ),
        unireg=UNIREG,
        fixed=template(FILES["preproc"]),
        mask=template(FILES["mask"]),
        out=template(Path(FILES["displacement"]).parent),
        registration=REGISTRATION_OPTIONS,
        space=SPACE,
        atlas_label=ATLAS_LABEL,
    shell:
        "{params.unireg} batch {params.options} -- register --fixed {params.fixed} --moving {input.atlas} "
        "--moving-labels {input.atlas_labels} --fixed-mask {params.mask} --moving-mask {input.atlas_mask} "
        "--out {params.out} --subject {{subject}} --space {params.space} --atlas-label {params.atlas_label} "
        "{params.registration} > {log} 2>&1"
