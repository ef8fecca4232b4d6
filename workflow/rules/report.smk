# Tables and figures of each report in config["reports"], and the index that links them (torch-free).


# Cheap, and they write into the (git-tracked) reports folder: run them where Snakemake runs.
localrules:
    table,
    complexity,
    xdomain,
    curves,
    inner_steps,
    sinusoid_fits,
    gates,
    loss_variance,
    index,


rule table:
    input:
        evals=lambda w: run_evals(report_runs(w.name)),
        paper="config/paper_results.csv",
    output:
        md=f"{REPORTS}/tables/{{name}}.md",
        csv=report(f"{REPORTS}/tables/{{name}}.csv", caption="../report/table.rst", category="Tables",
                   labels={"report": "{name}"}),
    log:
        f"{LOGS}/report/{{name}}_table.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        title=lambda w: config["reports"][w.name].get("title", w.name),
        wall_time=lambda w: "--wall-time" if config["reports"][w.name].get("wall_time") else "",
    shell:
        "PYTHONPATH=src python -m metarepro report table --name {wildcards.name} --title {params.title:q} --paper {input.paper:q}"
        " {params.wall_time}"
        " --out {output.md:q} {input.evals:q} > {log:q} 2>&1"


rule complexity:
    input:
        lambda w: run_files(report_runs(w.name), "eval.json", "config.yaml"),
    output:
        md=f"{REPORTS}/tables/{{name}}_complexity.md",
        csv=report(f"{REPORTS}/tables/{{name}}_complexity.csv", caption="../report/complexity.rst",
                   category="Tables", labels={"report": "{name}", "table": "complexity"}),
    log:
        f"{LOGS}/report/{{name}}_complexity.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        title=lambda w: f"Complexity (parameters, time, memory): {config['reports'][w.name].get('title', w.name)}",
        run_dirs=lambda w: [r.run_dir for r in report_runs(w.name)],
    shell:
        "PYTHONPATH=src python -m metarepro report complexity --name {wildcards.name} --title {params.title:q}"
        " --out {output.md:q} {params.run_dirs:q} > {log:q} 2>&1"


rule xdomain:
    input:
        xdomain_evals,
    output:
        md=f"{REPORTS}/tables/{{name}}_xdomain.md",
        csv=report(f"{REPORTS}/tables/{{name}}_xdomain.csv", caption="../report/xdomain.rst",
                   category="Tables", labels={"report": "{name}", "table": "cross-domain"}),
    log:
        f"{LOGS}/report/{{name}}_xdomain.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        title=lambda w: f"Cross-domain: {config['reports'][w.name].get('title', w.name)}",
    shell:
        "PYTHONPATH=src python -m metarepro report xdomain --name {wildcards.name} --title {params.title:q}"
        " --out {output.md:q} {input:q} > {log:q} 2>&1"


rule curves:
    input:
        runs=lambda w: run_files(report_runs(w.name), "train_log.csv", "config.yaml"),
        paper="config/paper_results.csv",
    output:
        report(f"{FIGURES}/{{name}}_curves.png", caption="../report/curves.rst", category="Figures",
               labels={"report": "{name}", "figure": "training curves"}),
    log:
        f"{LOGS}/report/{{name}}_curves.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        run_dirs=lambda w: [r.run_dir for r in report_runs(w.name)],
    shell:
        "PYTHONPATH=src python -m metarepro report figure --kind curves --paper {input.paper:q} --out {output:q}"
        " {params.run_dirs:q} > {log:q} 2>&1"


rule inner_steps:
    input:
        lambda w: run_files(report_runs(w.name), "eval.json"),
    output:
        report(f"{FIGURES}/{{name}}_inner_steps.png", caption="../report/inner_steps.rst",
               category="Figures", labels={"report": "{name}", "figure": "inner steps"}),
    log:
        f"{LOGS}/report/{{name}}_inner_steps.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "PYTHONPATH=src python -m metarepro report figure --kind inner_steps --out {output:q} {input:q} > {log:q} 2>&1"


rule sinusoid_fits:
    input:
        lambda w: run_files(report_runs(w.name, "sinusoid"), "eval.json"),
    output:
        report(f"{FIGURES}/{{name}}_fits.png", caption="../report/sinusoid_fits.rst",
               category="Figures", labels={"report": "{name}", "figure": "sinusoid fits"}),
    log:
        f"{LOGS}/report/{{name}}_fits.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "PYTHONPATH=src python -m metarepro report figure --kind sinusoid_fits --out {output:q} {input:q} > {log:q} 2>&1"


rule gates:
    input:
        gates_evals,
    output:
        report(f"{FIGURES}/{{name}}_gates.png", caption="../report/gates.rst",
               category="Figures", labels={"report": "{name}", "figure": "Meta-LSTM gates"}),
    log:
        f"{LOGS}/report/{{name}}_gates.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "PYTHONPATH=src python -m metarepro report figure --kind gates --out {output:q} {input:q} > {log:q} 2>&1"


rule loss_variance:
    input:
        lambda w: run_files(report_runs(w.name), "train_log.csv", "config.yaml"),
    output:
        report(f"{FIGURES}/{{name}}_loss_variance.png", caption="../report/loss_variance.rst",
               category="Figures", labels={"report": "{name}", "figure": "inner-loss variance"}),
    log:
        f"{LOGS}/report/{{name}}_loss_variance.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        run_dirs=lambda w: [r.run_dir for r in report_runs(w.name)],
    shell:
        "PYTHONPATH=src python -m metarepro report figure --kind loss_variance --out {output:q} {params.run_dirs:q}"
        " > {log:q} 2>&1"


rule cml_analysis:
    """CML's five analysis figures (noise control, gradient cosine, gradient norms, CKA, t-SNE) from a report's
    run directories."""
    input:
        lambda w: run_files(report_runs(w.name), "train_log.csv", "config.yaml", "eval.json"),
    output:
        report(f"{FIGURES}/{{name}}_{{kind}}.png", caption="../report/cml_analysis.rst", category="Figures",
               labels={"report": "{name}", "figure": "{kind}"}),
    wildcard_constraints:
        kind="cml_noise|cml_cosine|grad_norms|cka|tsne",
    log:
        f"{LOGS}/report/{{name}}_{{kind}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        run_dirs=lambda w: [r.run_dir for r in report_runs(w.name)],
    shell:
        "PYTHONPATH=src python -m metarepro report figure --kind {wildcards.kind} --out {output:q}"
        " {params.run_dirs:q} > {log:q} 2>&1"


rule index:
    input:
        lambda w: [f for name in config["reports"] for f in report_outputs(name)],
    output:
        f"{REPORTS}/README.md",
    log:
        f"{LOGS}/report/index.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "PYTHONPATH=src python -m metarepro report index --out {output:q} {input:q} > {log:q} 2>&1"
