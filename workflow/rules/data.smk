# Data rules: synthetic data (when the dataset is synthetic), paired store, QC summary.


rule synth:
    output:
        "<results>/{dataset}/synthetic.h5ad",
    params:
        opts=lambda wildcards: synth_opts(wildcards.dataset),
    log:
        "<results>/{dataset}/logs/synth.log",
    benchmark:
        "<results>/{dataset}/benchmarks/synth.tsv"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip synth --out {output} {params.opts} > {log} 2>&1"


rule ingest:
    input:
        lambda wildcards: dataset_inputs(wildcards.dataset),
    output:
        directory("<results>/{dataset}/store.zarr"),
    params:
        fmt=lambda wildcards: dataset_format(wildcards.dataset),
        sets=set_opts("ingest"),
    log:
        "<results>/{dataset}/logs/ingest.log",
    benchmark:
        "<results>/{dataset}/benchmarks/ingest.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(2000, 4),
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip ingest {input} --out {output} --format {params.fmt} {params.sets} > {log} 2>&1"


rule inspect:
    input:
        store="<results>/{dataset}/store.zarr",
    output:
        "<results>/{dataset}/inspect.json",
    log:
        "<results>/{dataset}/logs/inspect.log",
    benchmark:
        "<results>/{dataset}/benchmarks/inspect.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(1000, 1),
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip inspect {input.store} --json > {output} 2> {log}"
