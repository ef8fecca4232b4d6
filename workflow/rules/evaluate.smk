# Evaluation of a trained run on the fixed test episodes -> {results_dir}/.../seed{seed}/eval.json.


rule evaluate:
    input:
        model=f"{RUN}/model.pt",
        config=f"{RUN}/config.yaml",
        data=lambda w: prepared(w.dataset),
    output:
        f"{RUN}/eval.json",
    log:
        f"{LOGS}/evaluate/{RUN_LOG}",
    benchmark:
        f"{LOGS}/benchmark/evaluate/{RUN_BENCH}"
    conda:
        job_env(run_gpus)
    threads: config["threads"]
    resources:
        mem_mb=lambda w: MEM_MB.get(w.dataset, 8000),
        runtime=lambda w, attempt: 60 * attempt,
        cpus_per_task=config["threads"],
        gpu=job_gpus(run_gpus),
    params:
        run_dir=lambda w, output: os.path.dirname(output[0]),
    shell:
        "PYTHONPATH=src python -m metarepro evaluate --run-dir {params.run_dir:q} --threads {threads} --gpus {resources.gpu} > {log:q} 2>&1"


# The same run tested at other shots than it was trained with (experiment key `test_shots`).
rule evaluate_shots:
    input:
        model=f"{RUN}/model.pt",
        config=f"{RUN}/config.yaml",
        data=lambda w: prepared(w.dataset),
    output:
        f"{RUN}/eval_{{test_shots}}shot.json",
    log:
        f"{LOGS}/evaluate/{{dataset}}/{{method}}/{{ways}}way{{shots}}shot/seed{{seed}}_{{test_shots}}shot.log",
    benchmark:
        f"{LOGS}/benchmark/evaluate/{{dataset}}/{{method}}/{{ways}}way{{shots}}shot/seed{{seed}}_{{test_shots}}shot.tsv"
    conda:
        job_env(run_gpus)
    threads: config["threads"]
    wildcard_constraints:
        test_shots=r"\d+",
    resources:
        mem_mb=lambda w: MEM_MB.get(w.dataset, 8000),
        runtime=lambda w, attempt: 60 * attempt,
        cpus_per_task=config["threads"],
        gpu=job_gpus(run_gpus),
    params:
        run_dir=lambda w, output: os.path.dirname(output[0]),
    shell:
        "PYTHONPATH=src python -m metarepro evaluate --run-dir {params.run_dir:q} --shots {wildcards.test_shots}"
        " --threads {threads} --gpus {resources.gpu} > {log:q} 2>&1"


# Cross-domain: a run tested on another dataset's test classes (experiment key `cross_domain`). The target is
# downloaded and prepared by the DAG even when nothing trains on it; the source's prepared data is an input
# because the job records which target test classes the source trained on (by WordNet concept), and refuses a
# pair cut from one image collection that shares classes, before any work.
rule evaluate_xdomain:
    input:
        model=f"{RUN}/model.pt",
        config=f"{RUN}/config.yaml",
        source=lambda w: prepared(w.dataset),
        target=lambda w: prepared(w.target),
    output:
        f"{RUN}/eval_xdomain_{{target}}.json",
    log:
        f"{LOGS}/evaluate/{{dataset}}/{{method}}/{{ways}}way{{shots}}shot/seed{{seed}}_xdomain_{{target}}.log",
    benchmark:
        f"{LOGS}/benchmark/evaluate/{{dataset}}/{{method}}/{{ways}}way{{shots}}shot/seed{{seed}}_xdomain_{{target}}.tsv"
    conda:
        job_env(run_gpus)
    threads: config["threads"]
    wildcard_constraints:
        target=_alternatives(set(used_datasets(config)) - GENERATED),
    resources:
        mem_mb=lambda w: max(MEM_MB.get(w.dataset, 8000), MEM_MB.get(w.target, 8000)),
        runtime=lambda w, attempt: 60 * attempt,
        cpus_per_task=config["threads"],
        gpu=job_gpus(run_gpus),
    params:
        run_dir=lambda w, output: os.path.dirname(output[0]),
        target_data=lambda w: f"{DATA}/{w.target}",
        # a param, so changing the target's options re-runs the test
        options=lambda w: dataset_options(w.target),
        flags=xdomain_flags,
    shell:
        "PYTHONPATH=src python -m metarepro evaluate --run-dir {params.run_dir:q} --target {wildcards.target}"
        " --target-data {params.target_data:q} --target-options {params.options:q} {params.flags}"
        " --threads {threads} --gpus {resources.gpu} > {log:q} 2>&1"
