# DICOM -> NIfTI per subject: the series the index chose (manifest column `selected`) through dcm2niix.


rule convert:
    input:
        manifest=f"{RESULTS}/manifest.tsv",
        files=SERIES_FILES,
    output:
        image=FILES["image"],
    log:
        log("convert"),
    benchmark:
        bench("convert")
    conda:
        "../../envs/dicom.yaml"
    params:
        unireg=UNIREG,
        salt=UID_SALT,
    shell:
        "{params.unireg} convert --manifest {input.manifest} --files {input.files} --subject {wildcards.subject} "
        "--salt-file {params.salt} --out {output.image} > {log} 2>&1"
