# omicsclip workflow, run from a source checkout:
#
#   snakemake --cores 2                                      # the synthetic demo (configs/demo.yaml)
#   snakemake --cores 8 --configfile configs/pbmc10k.yaml    # a real dataset (relative inputs: from this folder)
#   snakemake --profile configs/profiles/slurm --configfile configs/pbmc10k.yaml
#
# The workflow itself is workflow/Snakefile, which ships inside the package (`omicsclip demo` runs it from an
# installed wheel); this file only includes it. See docs/workflow.md.


include: "workflow/Snakefile"


# An included file's `default_target` does not carry over to the including Snakefile: name the default here.
rule default:
    input:
        rules.all.input,
    default_target: True
