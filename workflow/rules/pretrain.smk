# Pretraining of a classifier over all meta-train classes, once per (dataset, backbone, seed), for the methods
# in metarepro.config.PRETRAINED_METHODS -> {results_dir}/{dataset}/pretrain/{backbone}/seed{seed}/backbone.pt.
# {backbone} is the backbone label (metarepro.config.backbone_label: the name plus its args, e.g. conv4-64).


rule pretrain:
    input:
        lambda w: prepared(w.dataset),
    output:
        # The CLI also keeps an undeclared checkpoints/last.pt here and resumes from it (as metatrain does).
        backbone=f"{PRETRAIN}/backbone.pt",
        train_log=f"{PRETRAIN}/train_log.csv",
        config=f"{PRETRAIN}/config.yaml",
    log:
        f"{LOGS}/pretrain/{{dataset}}/{{backbone}}/seed{{seed}}.log",
    benchmark:
        f"{LOGS}/benchmark/pretrain/{{dataset}}/{{backbone}}/seed{{seed}}.tsv"
    wildcard_constraints:
        backbone=_alternatives({p.label for p in pretrains()}),
    conda:
        job_env(pretrain_gpus)
    threads: config["threads"]
    priority: 20              # a few minutes, and the baselines wait for it: early, after the longest trainings
    resources:
        mem_mb=lambda w: MEM_MB.get(w.dataset, 8000),
        runtime=lambda w, attempt: pretrain_runtime(w) * attempt,
        cpus_per_task=config["threads"],
        gpu=job_gpus(pretrain_gpus),
    params:
        # The whole resolved pretrain config: editing the dataset's `pretrain:` block re-runs it (and its users).
        run=pretrain_config,
    shell:
        "PYTHONPATH=src python -m metarepro pretrain --run {params.run:q} --threads {threads} --gpus {resources.gpu} > {log:q} 2>&1"
