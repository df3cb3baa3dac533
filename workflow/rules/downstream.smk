# Rules on the selected model: embeddings, FAISS index of the training cells, RNA-only queries of every cell
# against it (the report compares imputed with measured protein on the held-out test cells), few-label head and
# few-label learning curves.


rule embed:
    input:
        store="<results>/{dataset}/store.zarr",
        model="<results>/{dataset}/best/model",
    output:
        directory("<results>/{dataset}/best/embeddings.zarr"),
    log:
        "<results>/{dataset}/logs/embed.log",
    benchmark:
        "<results>/{dataset}/benchmarks/embed.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(2000, 4),
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip embed {input.store} --model {input.model} --out {output} > {log} 2>&1"


rule index:
    input:
        emb="<results>/{dataset}/best/embeddings.zarr",
    output:
        directory("<results>/{dataset}/best/index"),
    params:
        sets=lambda wildcards: set_opts(
            "index", index__splits=["train"], index__label_key=label_key(wildcards.dataset)
        ),
    log:
        "<results>/{dataset}/logs/index.log",
    benchmark:
        "<results>/{dataset}/benchmarks/index.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(2000, 4),
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip index {input.emb} --out {output} {params.sets} > {log} 2>&1"


rule query:
    input:
        store="<results>/{dataset}/store.zarr",
        model="<results>/{dataset}/best/model",
        index="<results>/{dataset}/best/index",
    output:
        directory("<results>/{dataset}/best/query"),
    params:
        sets=set_opts("query"),
    log:
        "<results>/{dataset}/logs/query.log",
    benchmark:
        "<results>/{dataset}/benchmarks/query.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(2000, 4),
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip query {input.store} --modality rna --model {input.model} --index {input.index} "
        "--out {output} {params.sets} > {log} 2>&1"


rule finetune:
    input:
        emb="<results>/{dataset}/best/embeddings.zarr",
        store="<results>/{dataset}/store.zarr",
        model="<results>/{dataset}/best/model",
    output:
        directory("<results>/{dataset}/best/head"),
    params:
        labels=lambda wildcards: label_key(wildcards.dataset),
        sets=set_opts("finetune"),
    log:
        "<results>/{dataset}/logs/finetune.log",
    benchmark:
        "<results>/{dataset}/benchmarks/finetune.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000, 4),
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip finetune {input.emb} --labels {params.labels} --store {input.store} --model {input.model} "
        "--out {output} {params.sets} > {log} 2>&1"


rule fewlabel:
    input:
        emb="<results>/{dataset}/best/embeddings.zarr",
        store="<results>/{dataset}/store.zarr",
        model="<results>/{dataset}/best/model",
    output:
        "<results>/{dataset}/best/fewlabel.json",
    params:
        labels=lambda wildcards: label_key(wildcards.dataset),
        sets=set_opts("evaluate", "finetune"),
    log:
        "<results>/{dataset}/logs/fewlabel.log",
    benchmark:
        "<results>/{dataset}/benchmarks/fewlabel.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000, 4),
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip fewlabel {input.emb} --labels {params.labels} --store {input.store} --model {input.model} "
        "--out {output} {params.sets} > {log} 2>&1"
