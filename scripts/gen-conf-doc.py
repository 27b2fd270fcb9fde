#!/usr/bin/env python3
"""Generates docs/carrier.conf.md, the carrier.conf(5) reference, from the
code and the annotated example, so the two cannot drift apart:

  - the keys, their sections and their defaults come from the daemon
    itself: `carrierd -p -c FILE` on a file holding only one route (every
    other key then shows its built-in default, and the route shows the
    keys of a [route SPACE] section);
  - each key's description is the comment block above it in
    etc/carrier.conf (keys listed together share the block above the
    first; a key the example only shows commented out, like level.smtp_in,
    takes the block above that line).

  scripts/gen-conf-doc.py            print the page
  scripts/gen-conf-doc.py --write    write docs/carrier.conf.md
  scripts/gen-conf-doc.py --check    exit 1 when the page is stale

CARRIER_BUILD (default build) names the directory holding carrierd.
"""
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / os.environ.get("CARRIER_BUILD", "build")
CARRIERD = BUILD / "carrierd"
EXAMPLE = ROOT / "etc" / "carrier.conf"
PAGE = ROOT / "docs" / "carrier.conf.md"

ROUTE_PROBE = "[route *]\nvia = mx\n"


def effective_keys():
    """[(section, [(key, default)])] in the daemon's order."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(ROUTE_PROBE)
        probe = f.name
    try:
        out = subprocess.run([str(CARRIERD), "-p", "-c", probe], capture_output=True,
                             text=True, timeout=30)
    finally:
        os.unlink(probe)
    if out.returncode != 0:
        sys.exit(f"gen-conf-doc: {CARRIERD} -p failed ({out.returncode}): {out.stderr.strip()}")
    sections, cur = [], None
    for line in out.stdout.splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        m = re.match(r"^\[(.+)\]$", line.strip())
        if m:
            name = "route SPACE" if m.group(1).startswith("route ") else m.group(1)
            cur = (name, [])
            sections.append(cur)
            continue
        key, _, value = line.partition("=")
        if cur is not None and key.strip():
            cur[1].append((key.strip(), value.strip()))
    return sections


def example_comments():
    """{(section, key): comment text} and the example's preamble and
    routing-table comment, from etc/carrier.conf."""
    desc, block, section, keyrun = {}, [], None, None
    preamble, tail, seen_section = [], [], False
    commented = {}
    for raw in EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if line.startswith(";") or line.startswith("#"):
            # Drop the marker and one space; deeper indentation is layout.
            text = line[1:][1:] if line[1:2] == " " else line[1:]
            text = text.rstrip()
            m = re.match(r"^([a-z_][a-z0-9_.]*)\s*=", text)
            if m and block and section:
                # A commented-out example key: it shares the block above.
                commented[(section, m.group(1))] = list(block)
                continue
            if text.startswith("----"):
                section = None
                tail = []
                continue
            if not seen_section:
                preamble.append(text)
            elif section is None:
                tail.append(text)
            block.append(text)
            keyrun = None
            continue
        if not line:
            block, keyrun = [], None
            continue
        m = re.match(r"^\[(.+)\]$", line)
        if m:
            section, block, keyrun, seen_section = m.group(1), [], None, True
            continue
        key = line.partition("=")[0].strip()
        if block:
            keyrun = list(block)
            block = []
        if section and keyrun:
            desc[(section, key)] = keyrun
    return desc, commented, preamble, tail


def describe(section, key, desc, commented):
    if (section, key) in desc:
        return desc[(section, key)]
    if (section, key) in commented:
        return commented[(section, key)]
    prefix = key.split(".")[0] + "."
    for (s, k), text in commented.items():
        if s == section and k.startswith(prefix) and "." in key:
            return text
    return None


def md_escape(s):
    return s.replace("|", "\\|")


def md_desc(lines):
    """A comment block as Markdown: prose lines flow, indented lines keep
    their own line as code."""
    out, prose = [], []
    for ln in lines:
        if ln.startswith(" "):
            if prose:
                out.append(md_escape(" ".join(prose)))
                prose = []
            out.append("`" + ln.strip() + "`")
        else:
            prose.append(ln.strip())
    if prose:
        out.append(md_escape(" ".join(prose)))
    return "  \n  ".join(out)


def render():
    sections = effective_keys()
    desc, commented, preamble, tail = example_comments()
    out = []
    w = out.append
    w("<!-- Generated by scripts/gen-conf-doc.py from `carrierd -p` and etc/carrier.conf:")
    w("     do not edit; run `scripts/gen-conf-doc.py --write` (make test checks it). -->")
    w("# carrier.conf(5)")
    w("")
    w("## NAME")
    w("")
    w("carrier.conf - configuration file of the carrier mail transfer agent")
    w("")
    w("## SYNOPSIS")
    w("")
    w("`/etc/carrier/carrier.conf` (any path, given with `carrierd -c FILE`)")
    w("")
    w("## DESCRIPTION")
    w("")
    w("One INI file. Sections name what they configure; every key has a default, so a")
    w("file holds only what differs. `carrierd -n -c FILE` checks a file without")
    w("starting and reports every error as `FILE:LINE: section.key: problem`;")
    w("`carrierd -p -c FILE` prints the effective configuration. With no `-c`,")
    w("carrierd uses an embedded development default (127.0.0.1:2525, spool and")
    w("Maildir under ./var; `carrierd -d` prints it). A reload (SIGHUP or")
    w("`carrier reload`) applies a new file, or keeps the running one when it has")
    w("errors.")
    w("")
    for p in preamble:
        if p and not p.startswith("carrier.conf:"):
            w(md_escape(p) + "  ")
    w("")
    w("Defaults below are the built-in values as `carrierd -p` prints them (sizes in")
    w("bytes, durations in seconds); the annotated example etc/carrier.conf shows")
    w("the same keys with comments.")
    w("")
    w("## SECTIONS AND KEYS")
    for name, keys in sections:
        w("")
        w(f"### [{name}]")
        if name == "route SPACE" and tail:
            cut = tail.index("") if "" in tail else len(tail)
            w("")
            w("\n".join(t.strip() for t in tail[:cut]))
            w("")
            w("```ini")
            w("\n".join(tail[cut + 1:]).strip("\n"))
            w("```")
            w("")
            w("Keys of a route section (defaults as for `[route *]` with `via = mx`):")
        w("")
        groups = []
        for key, default in keys:
            text = describe(name.split()[0] if name == "route SPACE" else name, key,
                            desc, commented)
            if groups and text is not None and groups[-1][1] == text:
                groups[-1][0].append((key, default))
            else:
                groups.append(([(key, default)], text))
        for members, text in groups:
            for key, default in members:
                shown = f"`{default}`" if default else "(empty)"
                w(f"- **{key}** = {shown}  ")
            if text:
                w("  " + md_desc(text))
            elif name == "route SPACE":
                w("  See the table above.")
            else:
                w("  (no description in etc/carrier.conf)")
    w("")
    w("## FILES")
    w("")
    w("- `/etc/carrier/carrier.conf`: the configuration (installed from etc/carrier.conf)")
    w("")
    w("## SEE ALSO")
    w("")
    w("carrierd(8) ([carrierd.md](carrierd.md)), carrier(8) ([carrier.md](carrier.md)),")
    w("the event catalogue ([events.md](events.md))")
    return "\n".join(out) + "\n"


def main(argv):
    text = render()
    if "--write" in argv:
        PAGE.write_text(text)
        return 0
    if "--check" in argv:
        have = PAGE.read_text() if PAGE.exists() else ""
        if have != text:
            print(f"{PAGE.relative_to(ROOT)} is stale: a key, default or etc/carrier.conf comment "
                  "changed; run `scripts/gen-conf-doc.py --write` and commit it", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
