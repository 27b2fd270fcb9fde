"""Helpers for the durability campaigns (issue 8): the LD_PRELOAD fault
shim (tests/fault/fault.c, built as build/fault/libfault.so), its log, the
power-cut shadow and the spool poker (build/fault/spoolpoke)."""
import os
import pathlib
import pwd
import shutil
import stat
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIM = ROOT / "build" / "fault" / "libfault.so"
POKE = ROOT / "build" / "fault" / "spoolpoke"
# The shim cannot be preloaded into a sanitizer binary (the ASan runtime
# must come first); the fault and power-cut tests run on the normal build.
SHIM_USABLE = SHIM.exists() and "asan" not in os.environ.get("CARRIER_BUILD", "")


def carrier_ids():
    try:
        pw = pwd.getpwnam("carrier")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return None


def give_to_carrier(path):
    ids = carrier_ids()
    if ids and os.geteuid() == 0:
        for dirpath, dirs, files in os.walk(path):
            os.chown(dirpath, *ids)
            for f in files:
                os.chown(os.path.join(dirpath, f), *ids)


def shim_env(fault_dir, log=None, **kw):
    """Environment for carrierd under the shim.  kw: at, errno, op, mode,
    shadow, sticky (FAULT_* variables)."""
    env = dict(os.environ)
    env.update(LD_PRELOAD=str(SHIM), FAULT_DIR=str(fault_dir))
    if log:
        env["FAULT_LOG"] = str(log)
    for k, v in kw.items():
        if v is not None:
            env["FAULT_" + k.upper()] = str(v)
    return env


def read_log(log):
    """Lines of the shim log as (n, op, path, rc, errno) tuples."""
    out = []
    try:
        text = pathlib.Path(log).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        out.append((int(parts[0]), parts[1], " ".join(parts[2:-2]),
                    int(parts[-2]), int(parts[-1])))
    return out


# ---- power-cut shadow ------------------------------------------------------

def _esc(rel):
    return "@root" if rel in ("", ".") else rel.replace("/", "%")


def shadow_init(tree, shadow, only=None):
    """Records `tree` as durable (the state at the start: the previous
    daemon stopped cleanly and the machine synced).  With `only` (names of
    subdirectories), only those are walked and copied."""
    shadow = pathlib.Path(shadow)
    (shadow / "ino").mkdir(parents=True, exist_ok=True)
    (shadow / "dirs").mkdir(exist_ok=True)
    for dirpath, dirs, files in os.walk(tree):
        rel = os.path.relpath(dirpath, tree)
        if only is not None and rel == ".":
            dirs[:] = [x for x in dirs if x in only]
            files = []
        lines = []
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                continue          # sockets, FIFOs: not data
            kind = "d" if name in dirs else "f"
            lines.append(f"{name} {st.st_ino} {kind}\n")
            if kind == "f":
                shutil.copyfile(os.path.join(dirpath, name), shadow / "ino" / str(st.st_ino))
        (shadow / "dirs" / _esc(rel)).write_text("".join(lines))
    for p in [shadow, shadow / "ino", shadow / "dirs"]:
        p.chmod(0o777)
    for p in (shadow / "ino").iterdir():
        p.chmod(0o666)
    for p in (shadow / "dirs").iterdir():
        p.chmod(0o666)


def _entries(shadow, rel):
    try:
        text = (shadow / "dirs" / _esc(rel)).read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.rsplit(" ", 2)
        if len(parts) == 3:
            out.append(tuple(parts))
    return out


def shadow_rebuild(shadow, tree, subdirs):
    """Replaces `subdirs` of `tree` with what the shadow says survived a
    power cut: only fsync'd content under names made durable.  A file whose
    name survived but whose data was never synced comes back empty."""
    shadow = pathlib.Path(shadow)
    tree = pathlib.Path(tree)
    known = {p.name for p in (shadow / "dirs").iterdir()}

    def build(rel, depth=0):
        dest = tree / rel
        dest.mkdir(exist_ok=True)
        names = set()
        for name, ino, kind in _entries(shadow, rel):
            if name.endswith(".new") or name in names:
                continue
            names.add(name)
            sub = f"{rel}/{name}" if rel not in ("", ".") else name
            if kind == "d":
                build(sub, depth + 1)
            else:
                src = shadow / "ino" / ino
                if src.exists():
                    shutil.copyfile(src, dest / name)
                else:
                    (dest / name).write_bytes(b"")
        # A directory whose own list exists was made durable (its fsync
        # commits its creation too on a journaling file system).
        prefix = "" if rel in ("", ".") else _esc(rel) + "%"
        for k in sorted(known):
            child = k[len(prefix):]
            if k == "@root" or k.endswith(".new") or not k.startswith(prefix) or "%" in child or child in names:
                continue
            names.add(child)
            build(f"{rel}/{child}" if rel not in ("", ".") else child, depth + 1)

    for sub in subdirs:
        shutil.rmtree(tree / sub, ignore_errors=True)
        if (shadow / "dirs" / _esc(sub)).exists() or any(
                e[0] == sub for e in _entries(shadow, "")):
            build(sub)
    give_to_carrier(tree)


# ---- the spool poker -------------------------------------------------------

def poke(*args):
    r = subprocess.run([str(POKE), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"spoolpoke {args}: {r.stderr}"
    return r.stdout


def spool_qids(spool):
    return [l.split()[0] for l in poke("list", spool).splitlines() if l.strip()]
