#!/usr/bin/env python3
"""events.def tooling.

  events.py doc     print docs/events.md generated from src/events.def
  events.py check   fail when the catalogue is inconsistent, when code uses
                    an event that is not in it or passes fields its
                    template does not name, or when docs/events.md is stale
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEF = ROOT / "src" / "events.def"
DOC = ROOT / "docs" / "events.md"
# libevent's flags share the EV_ prefix; they are not events, and no event
# may take one of their names.
LIBEVENT = {"TIMEOUT", "READ", "WRITE", "SIGNAL", "PERSIST", "ET", "FINALIZE", "CLOSED"}
SEVERITIES = ["DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "FATAL"]
STR = r'"((?:[^"\\]|\\.)*)"'
EVENT_RE = re.compile(
    r"^EVENT\(\s*(\d+)\s*,\s*([A-Z0-9_]+)\s*,\s*([A-Z]+)\s*,\s*([A-Z_]+)\s*,"
    r"\s*" + STR + r"\s*,\s*" + STR + r"\s*,\s*" + STR + r"\s*\)",
    re.M | re.S)
PLACEHOLDER_RE = re.compile(r"\{([a-z_][a-z0-9_]*)(?::(int))?\}")


def c_unescape(s):
    return s.encode().decode("unicode_escape")


def categories():
    text = (ROOT / "src" / "evlog.h").read_text()
    return dict(re.findall(r"X\(([A-Z_]+), \"([a-z_]+)\"\)", text))


def load():
    text = DEF.read_text()
    # Strip comments so examples in them are not taken for events.
    body = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    events = []
    for m in EVENT_RE.finditer(body):
        num, name, sev, cat, tmpl, cause, remedy = m.groups()
        events.append(dict(id=int(num), name=name, severity=sev, category=cat,
                           tmpl=c_unescape(tmpl), cause=c_unescape(cause),
                           remedy=c_unescape(remedy)))
    declared = len(re.findall(r"^EVENT\(", body, re.M))
    return events, declared


def fields_of(ev):
    out = {}
    for part in (ev["tmpl"], ev["cause"], ev["remedy"]):
        for name, typ in PLACEHOLDER_RE.findall(part):
            out[name] = typ or "str"
    return out


def doc(events):
    cats = categories()
    lines = ["# carrier events", "",
             "Generated from `src/events.def` by `scripts/events.py doc`"
             " (`make docs`); do not edit by hand.", "",
             "Every event has a stable numeric ID and a name. Text sinks print"
             " `SEVERITY ID NAME: message`, followed for warnings and worse by"
             " the cause and the remedy; the JSON-lines sink writes the same"
             " with every field typed.", "",
             "Diagnostic levels per category (`[log] level.CATEGORY`):"
             " `none` shows errors and fatal events only, `minimum` (the"
             " default) adds warnings and notices, `medium` adds info,"
             " `maximum` adds debug.", "",
             "| ID | name | severity | category | message |",
             "|---|---|---|---|---|"]
    for ev in events:
        msg = ev["tmpl"].replace("|", "\\|")
        lines.append(f"| {ev['id']} | [{ev['name']}](#{ev['id']}) | "
                     f"{ev['severity'].lower()} | {cats.get(ev['category'], '?')} | {msg} |")
    lines.append("")
    for ev in events:
        lines.append(f"## {ev['id']}")
        lines.append("")
        lines.append(f"**{ev['name']}** ({ev['severity'].lower()}, "
                     f"{cats.get(ev['category'], '?')})")
        lines.append("")
        lines.append(f"Message: `{ev['tmpl']}`")
        lines.append("")
        f = fields_of(ev)
        if f:
            lines.append("Fields: " + ", ".join(f"`{k}` ({v})" for k, v in f.items()))
            lines.append("")
        if ev["cause"]:
            lines.append(f"Cause: {ev['cause']}")
            lines.append("")
        if ev["remedy"]:
            lines.append(f"Remedy: {ev['remedy']}")
            lines.append("")
    return "\n".join(lines)


def emit_calls(text):
    """Yields (event name, [field names]) for each evlog_emit call."""
    for m in re.finditer(r"\bevlog_emit0?\s*\(", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        call = text[m.end():i - 1]
        ev = re.search(r"\bEV_([A-Z0-9_]+)", call)
        if ev is None:
            continue        # a wrapper passing an id through
        names = re.findall(r"EVF_[SI]\(\s*\"([a-z0-9_]+)\"", call)
        yield ev.group(1), names, text.count("\n", 0, m.start()) + 1


def check(events, declared):
    errors = []
    cats = categories()
    if declared != len(events):
        errors.append(f"events.def: {declared} EVENT lines but {len(events)} parse;"
                      " keep each string one literal on one line")
    ids = [e["id"] for e in events]
    if ids != sorted(ids) or len(set(ids)) != len(ids):
        errors.append("events.def: IDs must be unique and in ascending order")
    names = [e["name"] for e in events]
    for n in {n for n in names if names.count(n) > 1}:
        errors.append(f"events.def: name {n} used twice")
    by_name = {e["name"]: e for e in events}
    for e in events:
        where = f"events.def: {e['id']} {e['name']}"
        if e["name"] in LIBEVENT:
            errors.append(f"{where}: name clashes with libevent's EV_{e['name']}")
        if e["severity"] not in SEVERITIES:
            errors.append(f"{where}: unknown severity {e['severity']}")
        if e["category"] not in cats:
            errors.append(f"{where}: unknown category {e['category']}")
        if e["severity"] in ("WARNING", "ERROR", "FATAL") and not e["cause"].strip():
            errors.append(f"{where}: a {e['severity'].lower()} event needs a cause")
        if e["severity"] in ("ERROR", "FATAL") and not e["remedy"].strip():
            errors.append(f"{where}: an {e['severity'].lower()} event needs a remedy")
        if not e["tmpl"].strip():
            errors.append(f"{where}: empty message")
    used = set()
    for path in sorted((ROOT / "src").glob("*.[ch]")):
        text = path.read_text(errors="replace")
        rel = path.relative_to(ROOT)
        for name in re.findall(r"\bEV_([A-Z0-9_]+)\b", text):
            if name in LIBEVENT:
                continue
            used.add(name)
            if name not in by_name:
                errors.append(f"{rel}: uses EV_{name}, which is not in events.def")
        for name, fields, line in emit_calls(text):
            ev = by_name.get(name)
            if ev is None:
                continue
            want = fields_of(ev)
            for f in fields:
                if f not in want:
                    errors.append(f"{rel}:{line}: EV_{name} gets field '{f}' that its"
                                  f" template does not name (template fields: {sorted(want)})")
            for f in want:
                if f not in fields:
                    errors.append(f"{rel}:{line}: EV_{name} is emitted without field"
                                  f" '{f}' that its text uses")
    if not DOC.exists() or DOC.read_text() != doc(events) + "\n":
        errors.append("docs/events.md is stale: run `make docs` and commit it")
    for e in errors:
        print(e, file=sys.stderr)
    print(f"events: {len(events)} in the catalogue, {len(used & set(by_name))} used in code,"
          f" {len(errors)} problems")
    return 1 if errors else 0


def main():
    events, declared = load()
    cmd = sys.argv[1] if len(sys.argv) > 1 else "check"
    if cmd == "doc":
        print(doc(events))
        return 0
    if cmd == "check":
        return check(events, declared)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
