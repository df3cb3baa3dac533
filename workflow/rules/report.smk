# The per-dataset report: one self-contained report.html, its figures also registered for `snakemake --report`.


rule report:
    input:
        unpack(report_inputs),
    output:
        html="<results>/{dataset}/report.html",
        figures=report(
            directory("<results>/{dataset}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="omicsclip",
            subcategory="{dataset}",
        ),
    params:
        runs=lambda wildcards, input: " ".join(f"--run {os.path.dirname(m)}" for m in input.models),
        fewlabel=lambda wildcards, input: f"--fewlabel {input.fewlabel}" if "fewlabel" in input.keys() else "",
        config=lambda wildcards: report_config_opts(wildcards.dataset),
    log:
        "<results>/{dataset}/logs/report.log",
    benchmark:
        "<results>/{dataset}/benchmarks/report.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000, 2),
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip report --dataset {wildcards.dataset} --store {input.store} --inspect {input.inspect} "
        "{params.runs} --selection {input.selection} --embeddings {input.emb} --query {input.query} "
        "{params.fewlabel} --figures {output.figures} --out {output.html} {params.config} > {log} 2>&1"
