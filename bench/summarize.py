#!/usr/bin/env python3
"""Medians per server of the per-round JSON files compare.sh wrote, and their ratios.

usage: summarize.py [--md] OUT_DIR SERVER...
  reads OUT_DIR/SERVER-ROUND.json, prints a table (--md: Markdown), writes OUT_DIR/summary.json
"""
import json, os, re, sys, statistics
md = sys.argv[1] == '--md'
args = sys.argv[2:] if md else sys.argv[1:]
out, servers = args[0], args[1:]
med, names = {}, []
for s in servers:
    runs = []
    for f in sorted(os.listdir(out)):
        if re.fullmatch(re.escape(s) + r'-\d+\.json', f):
            doc = json.load(open(os.path.join(out, f)))
            runs.append(doc['runs'][0])
            for k in doc.get('figures') or doc['runs'][0]:
                if k not in names: names.append(k)
    med[s] = {}
    for k in names:
        vals = [r[k] for r in runs if r.get(k) is not None]
        med[s][k] = statistics.median(vals) if vals else None
    med[s]['_n'] = len(runs)
def f(v):
    if v is None: return '-'
    return f'{v:.0f}' if abs(v) >= 100 else f'{v:.3g}'
refs = [r for r in ('ejabberd', 'prosody') if r in servers]
pairs = [(s, r) for r in refs for s in servers[servers.index(r) + 1:]]
if md:  # the ratios that matter in a report: Starling against each peer
    pairs = [p for p in pairs if p[0] == 'starling'] or [p for p in pairs if p == ('prosody', 'ejabberd')]
if 'starling' in servers and 'starling-base' in servers:  # a change against the build before it
    pairs.append(('starling', 'starling-base'))
if 'starling' in servers and 'starling-nomam' in servers:  # the archive's cost (MAM=1)
    pairs.append(('starling', 'starling-nomam'))
hdr = ['figure'] + [f'{s} (n={med[s]["_n"]})' for s in servers] + [f'{s}/{r}' for s, r in pairs]
rows = [hdr]
for k in names:
    row = [k] + [f(med[s].get(k)) for s in servers]
    for s, r in pairs:
        a, b = med[s].get(k), med[r].get(k)
        row.append(f'{a / b:.2f}' if a is not None and b else '-')
    rows.append(row)
w = [max(len(r[i]) for r in rows) for i in range(len(hdr))]
if md:
    for i, r in enumerate(rows):
        print('| ' + ' | '.join(r) + ' |')
        if i == 0: print('|' + '---|' * len(r))
    rows = []
for i, r in enumerate(rows):
    print('  '.join(c.rjust(w[j]) if j else c.ljust(w[j]) for j, c in enumerate(r)))
    if i == 0: print('-' * (sum(w) + 2 * len(w)))
json.dump({'servers': servers, 'median': med}, open(os.path.join(out, 'summary.json'), 'w'), indent=1)
