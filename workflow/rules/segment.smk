# Multi-atlas segmentation (atlas: an atlas set, `unireg atlas import-set`): every member is registered
# onto the preprocessed subject (the model loaded once) and their labels are fused (atlas_set.fusion);
# per-member fields stay in memory. The GPU rule in place of register, with the same resources, device
# handling and batches.


rule segment:
    input:
        after=ledger("preprocess"),
        atlas_set=f"{config['atlas']}/{ATLAS_SET_FILE}",
    output:
        ledger=ledger("segment"),
    log:
        batch_log("segment"),
    benchmark:
        bench("segment")
    conda:
        "../../envs/segment.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 12000 * attempt,
        gpu=1 if USE_GPU else 0,
    params:
        **batch_params(
            "segment",
            inputs=[FILES["preproc"], FILES["mask"], f"{config['atlas']}/{ATLAS_SET_FILE}"],
            outputs=[FILES[k] for k in ("warped_labels", "confidence", "segment_json")],
            after="preprocess",
        ),
        unireg=UNIREG,
        fixed=template(FILES["preproc"]),
        mask=template(FILES["mask"]),
        out=template(Path(FILES["warped_labels"]).parent),
        atlas_set=lambda w, input: Path(input.atlas_set).parent,
        fusion=ATLAS_SET_OPTIONS["fusion"],
        k=f"--k {ATLAS_SET_OPTIONS['k']}" if ATLAS_SET_OPTIONS["k"] else "",
        registration=REGISTRATION_OPTIONS,
        space=SPACE,
        atlas_label=ATLAS_LABEL,
    shell:
        "{params.unireg} batch {params.options} -- segment --fixed {params.fixed} --fixed-mask {params.mask} "
        "--atlas-set {params.atlas_set} --fusion {params.fusion} {params.k} --out {params.out} "
        "--subject {{subject}} --space {params.space} --atlas-label {params.atlas_label} "
        "{params.registration} > {log} 2>&1"
