# Cohort discovery (one manifest for the whole cohort) and DICOM -> NIfTI conversion per subject.


rule demo:
    output:
        cohort=f"{DEMO_DIR}/cohort.tsv",
    log:
        "logs/demo/demo.log",
    benchmark:
        "benchmarks/demo/demo.tsv"
    params:
        unireg=UNIREG,
        low_res="--low-res" if config["demo"]["low_res"] else "",
        n=config["demo"]["subjects"],
        seed=config["demo"]["seed"],
        out=lambda w, output: Path(output.cohort).parent,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "{params.unireg} demo --out {params.out} --subjects {params.n} --seed {params.seed} {params.low_res} > {log} 2>&1"


checkpoint index:
    input:
        cohort=cohort_input(),
    output:
        manifest=f"{RESULTS}/manifest.tsv",
    log:
        "logs/index/index.log",
    benchmark:
        "benchmarks/index/index.tsv"
    params:
        unireg=UNIREG,
    conda:
        "../../envs/dicom.yaml"
    shell:
        "{params.unireg} index --input {input.cohort} --out {output.manifest} > {log} 2>&1"


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
