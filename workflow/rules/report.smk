# Tables and figures of each report in config["reports"], and the index that links them (torch-free).


# Cheap, and they write into the (git-tracked) reports folder: run them where Snakemake runs.
localrules:
    table,
    side_table,
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


rule side_table:
    """The tables of metarepro.report_cards.SIDE_TABLE_CARDS that a report asks for (`complexity: true`,
    `cross_domain: true`): {name}_{kind}.md/.csv, from `report <kind>`."""
    input:
        side_table_inputs,
    output:
        md=f"{REPORTS}/tables/{{name}}_{{kind}}.md",
        csv=report(f"{REPORTS}/tables/{{name}}_{{kind}}.csv", caption="../report/side_table.rst",
                   category="Tables", labels={"report": "{name}", "table": "{kind}"}),
    wildcard_constraints:
        kind=_alternatives(SIDE_TABLE_CARDS),
    log:
        f"{LOGS}/report/{{name}}_{{kind}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        title=lambda w: f"{SIDE_TABLE_CARDS[w.kind].title}: {config['reports'][w.name].get('title', w.name)}",
        args=side_table_args,
        caption=lambda w: SIDE_TABLE_CARDS[w.kind].caption,
    shell:
        "PYTHONPATH=src python -m metarepro report {wildcards.kind} --name {wildcards.name} --title {params.title:q}"
        " --out {output.md:q} {params.args:q} > {log:q} 2>&1"


rule figure:
    """Every figure kind of metarepro.report_cards: what it reads from the report's runs and its caption come from
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
    params:
        # the other profiles' report folders are listed as they are on disk (not inputs: no job here makes them)
        profiles=sorted(glob.glob("config/*.yaml")),
    shell:
        "PYTHONPATH=src python -m metarepro report index --out {output:q} --profiles {params.profiles:q}"
        " -- {input:q} > {log:q} 2>&1"
