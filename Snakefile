# omicsclip workflow: [synth] -> ingest -> train (one run per temperature) -> evaluate -> select (validation
# retrieval) -> embed -> index -> query -> finetune / fewlabel -> report, per dataset listed in the config.
#
#   snakemake --cores 2                                      # the synthetic demo (configs/demo.yaml)
#   snakemake --cores 8 --configfile configs/pbmc10k.yaml    # a real dataset
#   snakemake --profile configs/profiles/slurm --configfile configs/pbmc10k.yaml
#
# Rules call the installed `omicsclip` CLI; see docs/workflow.md.

import os

from snakemake.utils import min_version, validate

min_version("9.0")


# `snakemake` without --configfile runs the demo; a --configfile replaces it (it would otherwise be merged).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "configs", "demo.yaml")


include: "workflow/rules/common.smk"  # merges configs/default.yaml, validates with one-line messages


validate(CFG, "configs/schema.yaml")  # Snakemake's validator on the same schema the CLI uses


pathvars:
    results=CFG["results_dir"],


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    temp=r"learn|[0-9][0-9.e+-]*",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/downstream.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        expand("<results>/{dataset}/report.html", dataset=DATASETS),
    default_target: True
