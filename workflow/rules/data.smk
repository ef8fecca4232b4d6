# Raw archives -> {raw_dir}/{dataset}/, then the compact training format -> {data_dir}/{dataset}/.


# Before the first job (after planning; Snakemake skips onstart on dry runs): every planned download must have a
# source, else one message names each dataset without one and what to provide, and no job starts.
onstart:
    if not workflow.touch and os.environ.get("METAREPRO_PREFLIGHT", "1") != "0":
        _problems = check_sources(planned_downloads(), MIRROR, RAW, DATA)
        if _problems:
            sys.exit(f"metarepro: {_problems}")


# Downloads need the internet (or the mirror), which compute nodes of a cluster often lack.
localrules:
    download,


rule download:
    output:
        # written last by the CLI: its presence means every raw file is there and checksum-verified
        f"{RAW}/{{dataset}}/MANIFEST.json",
    log:
        f"{LOGS}/download/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmark/download/{{dataset}}.tsv"
    wildcard_constraints:
        dataset=_alternatives(set(used_datasets(config)) - GENERATED - SYNTHESIZED),
    conda:
        "../../environment.yml"
    threads: 1
    priority: DATA_PRIORITY
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        mirror=MIRROR,
        out=lambda w, output: os.path.dirname(output[0]),
    shell:
        "PYTHONPATH=src python -m metarepro download --dataset {wildcards.dataset} --mirror {params.mirror:q}"
        " --out {params.out:q} > {log:q} 2>&1"


# Outputs are the four files rather than directory(): Snakemake marks a directory() output with a
# .snakemake_timestamp file inside it, which DVC would then version with the data (and `snakemake
# --touch` after a `dvc pull` would change it); plain files keep data/ exactly what prepare wrote.
rule prepare:
    input:
        # ancient: raw files are checksum-verified against fixed hashes, so a re-download (another
        # mirror, or resources/raw wiped and fetched again) is byte-identical and re-prepares nothing.
        # Synthesized datasets (G-Meta's synthetic graphs) have no raw files: prepare generates them.
        lambda w: [] if w.dataset in SYNTHESIZED else ancient(f"{RAW}/{w.dataset}/MANIFEST.json"),
    output:
        meta=f"{DATA}/{{dataset}}/meta.json",
        splits=[f"{DATA}/{{dataset}}/{split}.npz" for split in SPLITS],
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmark/prepare/{{dataset}}.tsv"
    wildcard_constraints:
        dataset=_alternatives(set(used_datasets(config)) - GENERATED),
    conda:
        "../../environment.yml"
    threads: 1
    priority: DATA_PRIORITY
    resources:
        mem_mb=lambda w: MEM_MB.get(w.dataset, 8000),
        runtime=60,
    params:
        # a param, so changing a dataset's options re-prepares it (and re-runs everything downstream)
        options=lambda w: dataset_options(w.dataset),
        raw=lambda w, input: os.path.dirname(input[0]) if input else "none",
        out=lambda w, output: os.path.dirname(output.meta),
    shell:
        "PYTHONPATH=src python -m metarepro prepare --dataset {wildcards.dataset} --options {params.options:q}"
        " --raw {params.raw:q} --out {params.out:q} > {log:q} 2>&1"
