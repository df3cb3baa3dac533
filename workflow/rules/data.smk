# Data rules: synthetic data (when the dataset is synthetic), paired store (ingested from files, or pooled from
# other datasets of the config), QC summary.


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
    wildcard_constraints:
        dataset=name_pattern([d for d in DATASETS if d not in POOLED]),  # a pooled dataset's store comes from `pool`
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


# A reference trained on several datasets together: their stores pooled into one (the union of the genes and of the
# antibody panels, obs `dataset` = the member's name, barcodes BARCODE-MEMBER).
rule pool:
    input:
        pool_inputs,
    output:
        directory("<results>/{dataset}/store.zarr"),
    wildcard_constraints:
        dataset=name_pattern(POOLED),
    params:
        names=lambda wildcards: ",".join(pool_members(wildcards.dataset)),
    log:
        "<results>/{dataset}/logs/pool.log",
    benchmark:
        "<results>/{dataset}/benchmarks/pool.tsv"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 3000 * attempt,  # copies chunks of cells: bounded by chunk size
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip pool {input} --names {params.names} --out {output} > {log} 2>&1"


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
