# UniReg deformable registration: atlas template (moving) onto each preprocessed subject (fixed).
# The GPU rule: asks SLURM for a GPU when register.gpu is true and then runs on the GPU the job was
# given (register.device: auto), failing clearly when none is visible; else it runs on CPU.


rule register:
    input:
        fixed=rules.preprocess.output.image,
        mask=rules.preprocess.output.mask,
        atlas=f"{ATLAS_DIR}/atlas.nii.gz",
        atlas_labels=f"{ATLAS_DIR}/atlas_labels.nii.gz",
        atlas_mask=f"{ATLAS_DIR}/atlas_brainmask.nii.gz",
    output:
        displacement=FILES["displacement"],
        warped=FILES["warped"],
        info=FILES["displacement_json"],
    log:
        log("register"),
    benchmark:
        bench("register")
    conda:
        "../../envs/register.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 12000 * attempt,  # the one place of this request (SLURM too)
        gpu=1 if USE_GPU else 0,
    params:
        unireg=UNIREG,
        out=lambda w, output: Path(output.displacement).parent,
        model=f"--model {config['register']['model']}" if config["register"]["model"] else "",
        device=REGISTER_DEVICE,
        steps=config["register"]["instance_opt"],
        similarity=config["register"]["instance_opt_similarity"],
        network_grid=config["register"]["network_grid"],
        space=SPACE,
        atlas_label=ATLAS_LABEL,
    shell:
        "{params.unireg} register --fixed {input.fixed} --moving {input.atlas} --moving-labels {input.atlas_labels} "
        "--fixed-mask {input.mask} --moving-mask {input.atlas_mask} --out {params.out} --subject {wildcards.subject} "
        "--space {params.space} --atlas-label {params.atlas_label} {params.model} "
        "--device {params.device} --instance-opt {params.steps} "
        "--instance-opt-similarity {params.similarity} --network-grid {params.network_grid} > {log} 2>&1"
