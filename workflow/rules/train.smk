# Training rules: one model per temperature (or one with a learnable temperature), evaluation of each (of a pooled
# dataset: of each member), and selection of the best run on VALIDATION retrieval (metrics.json["validation"], never
# the test cells).


rule train:
    input:
        store="<results>/{dataset}/store.zarr",
    output:
        directory("<results>/{dataset}/t{temp}/model"),
    params:
        sets=lambda wildcards: train_opts(wildcards.dataset, wildcards.temp),
        # `omicsclip`, or `torchrun --standalone --nproc_per_node=<gpu> --no-python omicsclip` for gpu > 1
        launch=lambda wildcards, resources: train_launcher(resources.gpu),
    log:
        "<results>/{dataset}/logs/train_t{temp}.log",
    benchmark:
        "<results>/{dataset}/benchmarks/train_t{temp}.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(3000, 6),
        runtime=lambda wildcards, attempt: 120 * attempt,
        gpu=train_gpus(CFG),
    conda:
        "../envs/omicsclip.yaml"
    # --resume: a retried or interrupted job continues from its last checkpoint in model.partial/ (with as many
    # GPUs as before: a checkpoint is refused by another number of processes)
    shell:
        "{params.launch} train {input.store} --out {output} --resume {params.sets} > {log} 2>&1"


rule evaluate:
    input:
        store="<results>/{dataset}/store.zarr",
        model="<results>/{dataset}/t{temp}/model",
    output:
        "<results>/{dataset}/t{temp}/metrics.json",
    wildcard_constraints:
        dataset=name_pattern([d for d in DATASETS if d not in POOLED]),
    params:
        sets=lambda wildcards: evaluate_opts(wildcards.dataset),
    log:
        "<results>/{dataset}/logs/evaluate_t{temp}.log",
    benchmark:
        "<results>/{dataset}/benchmarks/evaluate_t{temp}.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(3000, 6),
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip evaluate {input.store} --model {input.model} --out {output} {params.sets} > {log} 2>&1"


# A pooled store holds several antibody panels: each member dataset is scored on its own held-out cells and panel.
rule evaluate_member:
    input:
        store="<results>/{dataset}/store.zarr",
        model="<results>/{dataset}/t{temp}/model",
    output:
        "<results>/{dataset}/t{temp}/metrics_{member}.json",
    wildcard_constraints:
        dataset=name_pattern(POOLED),
        member=name_pattern(sorted({m for d in POOLED for m in pool_members(d)})),
    params:
        sets=lambda wildcards: evaluate_opts(wildcards.dataset),
    log:
        "<results>/{dataset}/logs/evaluate_t{temp}_{member}.log",
    benchmark:
        "<results>/{dataset}/benchmarks/evaluate_t{temp}_{member}.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(3000, 6),
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip evaluate {input.store} --model {input.model} --out {output} --dataset {wildcards.member} "
        "{params.sets} > {log} 2>&1"


# A pooled dataset's run metrics (what `select` ranks the sweep on and the report shows): the mean over its members,
# each member's own metrics kept under "members".
rule pooled_metrics:
    input:
        lambda wildcards: [f"{CFG['results_dir']}/{wildcards.dataset}/t{wildcards.temp}/metrics_{m}.json"
                           for m in pool_members(wildcards.dataset)],
    output:
        "<results>/{dataset}/t{temp}/metrics.json",
    wildcard_constraints:
        dataset=name_pattern(POOLED),
    params:
        members=lambda wildcards, input: " ".join(f"{m}={path}" for m, path in zip(pool_members(wildcards.dataset),
                                                                                    input)),
    log:
        "<results>/{dataset}/logs/pooled_metrics_t{temp}.log",
    benchmark:
        "<results>/{dataset}/benchmarks/pooled_metrics_t{temp}.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip merge-metrics {params.members} --out {output} > {log} 2>&1"


rule select:
    input:
        metrics=expand("<results>/{{dataset}}/t{temp}/metrics.json", temp=RUNS),
        models=expand("<results>/{{dataset}}/t{temp}/model", temp=RUNS),
    output:
        selection="<results>/{dataset}/best/selection.json",
        model=directory("<results>/{dataset}/best/model"),
    params:
        models=lambda wildcards, input: " ".join(f"--model {m}" for m in input.models),
    log:
        "<results>/{dataset}/logs/select.log",
    benchmark:
        "<results>/{dataset}/benchmarks/select.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/omicsclip.yaml"
    shell:
        "omicsclip select {input.metrics} {params.models} --out {output.selection} "
        "--copy-model-to {output.model} > {log} 2>&1"
