# Cohort discovery: the demo cohort (when asked for) and one manifest for the whole cohort.


rule demo:
    output:
        cohort=f"{DEMO_DIR}/cohort.tsv",
    log:
        log("demo", "demo"),
    benchmark:
        bench("demo", "demo")
    conda:
        "../../envs/preprocess.yaml"
    params:
        unireg=UNIREG,
        low_res="--low-res" if config["demo"]["low_res"] else "",
        n=config["demo"]["subjects"],
        seed=config["demo"]["seed"],
        # reference labels: the built-in atlas's own, moved by each subject's known deformation
        atlas=config["atlas"] if config["atlas"] in BUILTIN_ATLASES else "none",
        spacing=config["atlas_spacing"],
        out=lambda w, output: Path(output.cohort).parent,
    shell:
        "{params.unireg} demo --out {params.out} --subjects {params.n} --seed {params.seed} {params.low_res} "
        "--atlas {params.atlas} --atlas-spacing {params.spacing} > {log} 2>&1"


checkpoint index:
    input:
        cohort=cohort_input(),
    output:
        manifest=f"{RESULTS}/manifest.tsv",
        files=SERIES_FILES,
    log:
        log("index", "index"),
    benchmark:
        bench("index", "index")
    conda:
        "../../envs/dicom.yaml"
    params:
        unireg=UNIREG,
        select=SERIES_FILTER,
        salt=UID_SALT,
    shell:
        "{params.unireg} index --input {input.cohort} --out {output.manifest} --files-out {output.files} "
        "{params.select} --salt-file {params.salt} > {log} 2>&1"
