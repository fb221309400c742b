# DICOM -> NIfTI per subject: the series the index chose (manifest column `selected`) through dcm2niix.


rule convert:
    input:
        manifest=f"{RESULTS}/manifest.tsv",
    output:
        image=f"{RESULTS}/sub-{{subject}}/anat/sub-{{subject}}_T1w.nii.gz",
    log:
        log("convert"),
    benchmark:
        bench("convert")
    params:
        unireg=UNIREG,
        salt=UID_SALT,
    conda:
        "../../envs/dicom.yaml"
    shell:
        "{params.unireg} convert --manifest {input.manifest} --subject {wildcards.subject} --salt-file {params.salt} "
        "--out {output.image} > {log} 2>&1"
