# Tables and figures of each report in config["reports"], and the index that links them (torch-free).


# Cheap, and they write into the (git-tracked) reports folder: run them where Snakemake runs.
localrules:
    table,
    complexity,
    xdomain,
    figure,
    index,


rule table:
    input:
        evals=lambda w: run_evals(report_runs(w.name)),
        paper=PAPER_RESULTS,
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


rule figure:
    """Every figure kind of metarepro.figure_cards: what it reads from the report's runs and its caption come from
    the kind's card, the picture from its renderer (`report figure --kind`)."""
    input:
        figure_inputs,
    output:
        report(f"{FIGURES}/{{name}}_{{kind}}.png", caption="../report/figure.rst", category="Figures",
               labels={"report": "{name}", "figure": "{kind}"}),
    wildcard_constraints:
        kind=_alternatives(FIGURE_CARDS),
    log:
        f"{LOGS}/report/{{name}}_{{kind}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        renderer=lambda w: FIGURE_CARDS[w.kind].renderer,
        paper=lambda w: f"--paper {PAPER_RESULTS}" if FIGURE_CARDS[w.kind].paper else "",
        args=figure_args,
        caption=lambda w: FIGURE_CARDS[w.kind].caption,
    shell:
        "PYTHONPATH=src python -m metarepro report figure --kind {params.renderer} {params.paper} --out {output:q}"
        " {params.args:q} > {log:q} 2>&1"


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
