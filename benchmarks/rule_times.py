"""Where a pipeline run's time goes: job-minutes per rule, and the longest jobs, from Snakemake's own log.

    python benchmarks/rule_times.py .snakemake/log/<the run's>.snakemake.log

Each job's time is from the timestamp before its `rule X:` block to the one before `Finished jobid: N` (Snakemake
prints both); with --cores 2 two jobs run at once, so job-minutes add up to about twice the wall time.
"""
import re, sys, collections, datetime
text = open(sys.argv[1]).read().splitlines()
start, rule_of, wc = {}, {}, {}
cur_time = None; cur_rule = None
for i, line in enumerate(text):
    m = re.match(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", line)
    if m:
        cur_time = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y"); continue
    m = re.match(r"^(?:local)?rule (\w+):", line)
    if m:
        cur_rule = m.group(1); continue
    m = re.match(r"^\s+jobid: (\d+)", line)
    if m and cur_rule:
        start[m.group(1)] = cur_time; rule_of[m.group(1)] = cur_rule; continue
    m = re.match(r"^\s+wildcards: (.*)", line)
    if m and cur_rule and start:
        wc[list(start)[-1]] = m.group(1)
    m = re.match(r"^Finished jobid: (\d+)", line)
    if m and m.group(1) in start:
        start[m.group(1)] = (start[m.group(1)], cur_time)
agg = collections.defaultdict(float); cnt = collections.Counter(); per = []
for j, v in start.items():
    if isinstance(v, tuple) and v[0] and v[1]:
        s = (v[1] - v[0]).total_seconds(); agg[rule_of[j]] += s; cnt[rule_of[j]] += 1; per.append((s, rule_of[j], wc.get(j, "")))
for r in sorted(agg, key=lambda r: -agg[r]):
    print(f"{r:18s} {cnt[r]:4d} jobs {agg[r]/60:7.1f} job-min")
by_method = collections.defaultdict(float)
for s_, r, w in per:
    m = re.search(r"method=([^,]+)", w)
    if m and r in ("metatrain", "evaluate", "evaluate_xdomain"):
        by_method[m.group(1).split("@")[0]] += s_
print("training + evaluation job-minutes per method (variants with their method):")
for m_ in sorted(by_method, key=lambda k: -by_method[k]):
    print(f"  {m_:18s} {by_method[m_]/60:7.1f}")
print(f"total {sum(agg.values())/60:.1f} job-min in {len(per)} jobs; longest:")
for s, r, w in sorted(per, reverse=True)[:10]:
    print(f"  {s/60:5.1f} min {r} {w}")
