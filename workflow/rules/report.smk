# Cohort aggregation of the per-subject metrics and the HTML report.


rule report:
    input:
        metrics=lambda w: expand(FILES["metrics"], subject=subjects()),
        manifest=f"{RESULTS}/manifest.tsv",
    output:
        html=report(f"{RESULTS}/report.html", caption="../report/cohort.rst", category="Cohort"),
        summary=f"{RESULTS}/cohort_metrics.tsv",
    log:
        log("report", "report"),
    benchmark:
        bench("report", "report")
    conda:
        "../../envs/report.yaml"
    params:
        unireg=UNIREG,
        results=lambda w, output: Path(output.html).parent,
        logs=LOGS,
    shell:
        "{params.unireg} report {params.results} --out {output.html} --summary {output.summary} --logs {params.logs} --manifest {input.manifest} "
        "> {log} 2>&1"
