# DICOM -> NIfTI per subject: the selected series (series_filter) through dcm2niix.


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
        select=" ".join(
            f"--{k.replace('_', '-')} '{v}'"
            for k, v in config["series_filter"].items()
            if v
        ),
    conda:
        "../../envs/dicom.yaml"
    shell:
        "{params.unireg} convert --manifest {input.manifest} --subject {wildcards.subject} {params.select} "
        "--out {output.image} > {log} 2>&1"
