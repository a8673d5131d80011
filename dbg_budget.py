import anyio, sys
from collections import Counter
from tests.campaign.run import Options, campaign
r = anyio.run(campaign, Options(int(sys.argv[1]), float(sys.argv[2]), quiet=True))
ev = r.evidence
print(r.table.split("  violations")[1][:3000])
print("excused", [(round(s-ev.started,1), round(e-ev.started,1), w) for s,e,w in ev.excused])
for v in r.violations:
    if v.check == "budget":
        start = v.at
        reqs = [x for x in ev.requests if start <= x["at"] < start + 2]
        print(v.subject, Counter((round(x["at"]-start, 1)) for x in reqs).most_common(50))
        print(Counter(x["path"] for x in reqs), Counter(x["status"] for x in reqs))
