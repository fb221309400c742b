# DICOM -> NIfTI per subject: the series the index chose (manifest column `selected`) through dcm2niix.
# One job per batch of subjects (unireg batch: each member as its own `unireg convert`).


rule convert:
    input:
        manifest=f"{RESULTS}/manifest.tsv",
        files=SERIES_FILES,
    output:
        ledger=ledger("convert"),
    log:
        batch_log("convert"),
    benchmark:
        bench("convert")
    conda:
        "../../envs/dicom.yaml"
    params:
        **batch_params("convert", inputs=[f"{RESULTS}/manifest.tsv", SERIES_FILES], outputs=[FILES["image"]]),
        unireg=UNIREG,
        image=template(FILES["image"]),
        salt=UID_SALT,
    shell:
        "{params.unireg} batch {params.options} -- convert --manifest {input.manifest} --files {input.files} "
        "--subject {{subject}} --salt-file {params.salt} --out {params.image} > {log} 2>&1"
