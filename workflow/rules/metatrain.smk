# Meta-training of one (dataset, method, ways, shots, seed) run -> {results_dir}/.../seed{seed}/.


rule metatrain:
    input:
        data=lambda w: prepared(w.dataset),
        # backbone.pt of the pretrain stage, for methods that start from it (finetune, nearest_neighbor)
        pretrained=pretrained_input,
    output:
        # The CLI also keeps an undeclared checkpoints/last.pt here and resumes from it, so a killed
        # job that Snakemake re-runs (profile: rerun-incomplete) picks up where it stopped.
        model=f"{RUN}/model.pt",
        train_log=f"{RUN}/train_log.csv",
        config=f"{RUN}/config.yaml",
    log:
        f"{LOGS}/metatrain/{RUN_LOG}",
    benchmark:
        f"{LOGS}/benchmark/metatrain/{RUN_BENCH}"
    conda:
        job_env(run_gpus)
    threads: config["threads"]
    priority: train_priority
    resources:
        mem_mb=lambda w: MEM_MB.get(w.dataset, 8000),
        runtime=lambda w, attempt: train_runtime(w) * attempt,   # a retried job gets more time
        cpus_per_task=config["threads"],
        gpu=job_gpus(run_gpus),
    params:
        # The whole resolved run config: editing one method's hparams re-runs only that method's jobs.
        run=run_config,
    shell:
        "PYTHONPATH=src python -m metarepro metatrain --run {params.run:q} --threads {threads} --gpus {resources.gpu} > {log:q} 2>&1"
