# Multi-atlas segmentation (atlas: an atlas set, `unireg atlas import-set`): in one job per subject
# every member is registered onto the preprocessed subject (the model loaded once) and their labels
# are fused (atlas_set.fusion); per-member fields stay in memory. The GPU rule in place of register,
# with the same resources and device handling.


rule segment:
    input:
        fixed=rules.preprocess.output.image,
        mask=rules.preprocess.output.mask,
        atlas_set=f"{config['atlas']}/{ATLAS_SET_FILE}",
    output:
        labels=FILES["warped_labels"],
        confidence=FILES["confidence"],
        info=FILES["segment_json"],
    log:
        log("segment"),
    benchmark:
        bench("segment")
    conda:
        "../../envs/segment.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 12000 * attempt,
        gpu=1 if USE_GPU else 0,
    params:
        unireg=UNIREG,
        out=lambda w, output: Path(output.labels).parent,
        atlas_set=lambda w, input: Path(input.atlas_set).parent,
        fusion=ATLAS_SET_OPTIONS["fusion"],
        k=f"--k {ATLAS_SET_OPTIONS['k']}" if ATLAS_SET_OPTIONS["k"] else "",
        model=f"--model {config['register']['model']}" if config["register"]["model"] else "",
        device=REGISTER_DEVICE,
        steps=config["register"]["instance_opt"],
        similarity=config["register"]["instance_opt_similarity"],
        network_grid=config["register"]["network_grid"],
        space=SPACE,
        atlas_label=ATLAS_LABEL,
    shell:
        "{params.unireg} segment --fixed {input.fixed} --fixed-mask {input.mask} --atlas-set {params.atlas_set} "
        "--fusion {params.fusion} {params.k} --out {params.out} --subject {wildcards.subject} "
        "--space {params.space} --atlas-label {params.atlas_label} {params.model} "
        "--device {params.device} --instance-opt {params.steps} "
        "--instance-opt-similarity {params.similarity} --network-grid {params.network_grid} > {log} 2>&1"
