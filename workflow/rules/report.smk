# Cohort aggregation of the per-subject metrics and the HTML report. After every batch's metrics; it
# lists the subjects that failed a stage (their batches recorded the failure and went on) and then
# fails the run, so that `snakemake` exits non-zero and the next run retries them.


rule report:
    input:
        metrics=all_ledgers("metrics"),
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
        "--fail-on-failed > {log} 2>&1"
