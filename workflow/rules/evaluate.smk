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
    conda:
        "../../environment.yml"
    threads: config["threads"]
    resources:
        mem_mb=lambda w: MEM_MB.get(w.dataset, 8000),
        runtime=60,
        gpu=config.get("gpu", 0),
    params:
        run_dir=lambda w, output: os.path.dirname(output[0]),
    shell:
        "PYTHONPATH=src python -m metarepro evaluate --run-dir {params.run_dir:q} --threads {threads} > {log:q} 2>&1"


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
    conda:
        "../../environment.yml"
    threads: config["threads"]
    wildcard_constraints:
        test_shots=r"\d+",
    resources:
        mem_mb=lambda w: MEM_MB.get(w.dataset, 8000),
        runtime=60,
        gpu=config.get("gpu", 0),
    params:
        run_dir=lambda w, output: os.path.dirname(output[0]),
    shell:
        "PYTHONPATH=src python -m metarepro evaluate --run-dir {params.run_dir:q} --shots {wildcards.test_shots}"
        " --threads {threads} > {log:q} 2>&1"
