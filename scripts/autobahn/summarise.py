#!/usr/bin/env python3
"""Summarises an Autobahn fuzzingclient report (reports/servers/index.json).

    summarise.py SPEC INDEX_JSON [MARKDOWN_OUT]

Prints the count of cases by behavior (OK, NON-STRICT, INFORMATIONAL,
UNIMPLEMENTED, FAILED) and by close behavior, every case that is not plain
OK, and the exclusions of the spec with their reasons. Exits 1 when a case
FAILED (in its behavior or its close behavior), when the report is empty,
or when an excluded pattern has no reason in the spec's "_exclusions".
"""
import collections
import json
import sys

ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]

# What the non-OK behaviours mean, from the Autobahn report's own legend.
MEANING = {
    "NON-STRICT": "passed, but not fail-fast (e.g. invalid UTF-8 detected at the end of a fragmented message rather than in the fragment that broke it)",
    "INFORMATIONAL": "no pass/fail: the case records what the peer did (e.g. the close code it echoed)",
    "UNIMPLEMENTED": "the peer does not implement the tested feature",
}


def case_key(case_id):
    return tuple(int(p) for p in case_id.split("."))


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.load(open(argv[1]))
    index = json.load(open(argv[2]))
    out = []
    ok = True

    reasons = spec.get("_exclusions", {})
    for pattern in spec.get("exclude-cases", []):
        if not reasons.get(pattern):
            out.append("ERROR: excluded cases %s have no reason in the spec's _exclusions" % pattern)
            ok = False

    for agent in sorted(index):
        cases = index[agent]
        if not cases:
            out.append("ERROR: no case ran against %s" % agent)
            ok = False
            continue
        by = collections.Counter(c["behavior"] for c in cases.values())
        by_close = collections.Counter(c["behaviorClose"] for c in cases.values())
        duration_ms = sum(c.get("duration", 0) for c in cases.values())
        out.append("Autobahn fuzzingclient against %s: %d cases" % (agent, len(cases)))
        out.append("")
        out.append("| behavior | cases | close behavior |")
        out.append("|---|---:|---:|")
        for b in ORDER + sorted((set(by) | set(by_close)) - set(ORDER)):
            out.append("| %s | %d | %d |" % (b, by.get(b, 0), by_close.get(b, 0)))
        out.append("")
        out.append("Sum of case durations: %.1f s." % (duration_ms / 1000.0))
        odd = [(k, c) for k, c in cases.items() if c["behavior"] != "OK" or c["behaviorClose"] != "OK"]
        if odd:
            out.append("")
            out.append("Cases not plain OK:")
            out.append("")
            for case_id, c in sorted(odd, key=lambda kc: case_key(kc[0])):
                out.append("- %s: %s (close: %s, close code %s)%s" % (
                    case_id, c["behavior"], c["behaviorClose"], c.get("remoteCloseCode"),
                    "; " + MEANING[c["behavior"]] if c["behavior"] in MEANING else ""))
        failed = [k for k, c in cases.items() if "FAILED" in (c["behavior"], c["behaviorClose"])]
        if failed:
            ok = False
            out.append("")
            out.append("FAILED: %s (see the case reports next to index.json)" % ", ".join(sorted(failed, key=case_key)))

    if reasons:
        out.append("")
        out.append("Excluded (features livecast does not offer):")
        out.append("")
        for pattern in spec.get("exclude-cases", []):
            out.append("- %s: %s" % (pattern, reasons.get(pattern, "(no reason given)")))

    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if len(argv) == 4:
        with open(argv[3], "w") as f:
            f.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
