"""Run untrusted Python (CodeIO reference code, predicted inputs) in a separate process.

The boundary is the kernel's, not Python's. When the kernel allows namespaces (`isolation()`
is "kernel"), the child runs

  * in its own mount namespace where EVERY mount is remounted read-only except its fresh
    temporary directory (verified by the child from /proc/self/mountinfo before any code runs:
    a mount left writable aborts the run), so a write anywhere else fails with EROFS whatever
    the code does to Python's own checks;
  * in an empty network namespace (loopback only) and its own IPC namespace;
  * with no capabilities (empty bounding set, no_new_privs), so it cannot remount or unmount;
    when started as root it also drops to uid/gid 65534 (keeping only CAP_DAC_READ_SEARCH so
    it can read an interpreter installed under a private home), which makes RLIMIT_NPROC=0
    bind: no new processes or threads (the kernel exempts uid 0 from that limit). As a normal
    user the namespaces come from an unprivileged user namespace and the uid stays yours.

Always, whatever the isolation: rlimits (CPU seconds, address space, file size, open files,
processes, no core dumps), a wall timeout after which the whole process group is killed, a
fresh temp dir (deleted afterwards) as cwd and HOME, an empty environment (no secrets), and a
`sys.addaudithook` hook refusing sockets, process creation, ctypes and writes outside the temp
dir. The hook is defence in depth and the only layer where namespaces are unavailable
(`isolation()` == "network": `unshare -rn` only; "audit-hook": nothing); CPython audit hooks
are not a boundary against code written to defeat them.

Outcomes: "ok", "error" (the code raised), "timeout" (wall or CPU limit), "refused" (a
forbidden operation or a resource cap such as memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

# The child-side runner. It reads {code, funcname, kwargs, nonce} as JSON from stdin.
_RUNNER = r"""
import json, os, sys
payload = json.loads(sys.stdin.read())
NONCE = payload["nonce"]
ROOT = os.path.realpath(os.getcwd())
_real_stdout = sys.stdout
VIOLATIONS = []

class SandboxRefusal(PermissionError):
    pass

def _emit_early(status, message):
    _real_stdout.write("\n" + NONCE + json.dumps({"status": status, "message": message}) + "\n")
    _real_stdout.flush()
    sys.exit(0)

if payload.get("kernel"):
    # Fail closed: every mount but our temp dir must be read-only in this mount namespace.
    # Only the top mount of a mount point is reachable (a later line covers an earlier one).
    _top = {}
    with open("/proc/self/mountinfo") as _f:
        for _line in _f:
            _parts = _line.split()
            _top[_parts[4].encode().decode("unicode_escape")] = _parts[5].split(",")
    for _mp, _opts in _top.items():
        if _mp != ROOT and "rw" in _opts:
            _emit_early("error", f"sandbox setup left {_mp} writable; refusing to run")

# Trusted preloads (numpy needs ctypes at import time, which the hook refuses afterwards).
for _mod in payload.get("preload", ()):
    if _mod in payload["code"]:
        try:
            __import__(_mod)
        except Exception:
            pass

# No new processes or threads from here on. Set here, after the preloads and after the uid
# change (a setuid with the limit already exceeded would fail the exec), not in preexec_fn.
import resource
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
del resource

def _install(root, violations, refusal):
    # Install the audit hook. Its state lives only in this closure (not in module globals that
    # the sandboxed code could rebind); a hook cannot be removed once added.
    import os, sys
    forbidden = ("socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
                 "os.fork", "os.forkpty", "pty.", "ctypes.", "os.kill", "os.killpg", "signal.",
                 "sys.remote_exec", "webbrowser.", "urllib.Request", "http.client.connect",
                 "ftplib.", "smtplib.", "poplib.", "imaplib.", "telnetlib.", "os.chdir",
                 "shutil.rmtree", "os.chmod", "os.chown", "os.link", "os.symlink", "gc.",
                 "sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
                 "sys.addaudithook", "cpython.run_", "code.__new__", "function.__new__",
                 "_imp.create_dynamic", "object.__setattr__", "object.__delattr__")
    write_events = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.truncate", "os.utime")
    read_deny = ("/proc", "/sys", "/dev/mem", "/dev/kmem", "/etc/shadow")
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep
    wr_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    # No helper closures: a frame reached through a traceback exposes the hook's locals, and a
    # helper function's closure cells would be rebindable from there.
    def hook(event, args):
        reason = None
        if event.startswith(forbidden):
            reason = repr(args)[:200]
        elif event == "import" and args[0] in ("_posixsubprocess", "_ctypes"):
            reason = args[0]
        elif event == "open" and not isinstance(args[0], int):
            path, mode, flags = args[0], args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & wr_flags))
            try:
                p = realpath(fsdecode(path))
            except Exception:
                p = "?"
            if writing and not (p == root or p.startswith(root + sep) or p == "/dev/null"):
                reason = f"write outside the sandbox dir: {p}"
            elif not writing and p.startswith(read_deny) and not p.startswith("/proc/self/fd"):
                reason = f"read of {p}"
        elif event in write_events:
            for a in args[:2]:
                if isinstance(a, (str, bytes)):
                    try:
                        p = realpath(fsdecode(a))
                    except Exception:
                        p = "?"
                    if not (p == root or p.startswith(root + sep)):
                        reason = f"outside the sandbox dir: {a!r}"
        if reason is not None:
            violations.append(f"{event}: {reason}")
            raise refusal(f"sandbox refused {event} ({reason})")

    # _posixsubprocess.fork_exec (behind subprocess/multiprocessing) raises no audit event of
    # its own: replace it, and refuse loading a fresh copy of the module.
    import _posixsubprocess, subprocess

    def no_fork_exec(*args, **kwargs):
        violations.append("_posixsubprocess.fork_exec: process creation")
        raise refusal("sandbox refused _posixsubprocess.fork_exec (process creation)")

    _posixsubprocess.fork_exec = no_fork_exec
    sys.addaudithook(hook)

def _jsonable(x, depth=0):
    if depth > 64:
        raise ValueError("result nested too deeply")
    if isinstance(x, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonable(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted((_jsonable(v, depth + 1) for v in x), key=repr)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist(), depth + 1)
    if hasattr(x, "item"):
        return x.item()
    return str(x)

def _emit(status, **kw):
    _real_stdout.write("\n" + NONCE + json.dumps({"status": status, **kw}) + "\n")
    _real_stdout.flush()

import io, traceback
sys.stdout = io.StringIO()
status, out = "ok", {}
try:
    ns = {"__name__": "__sandbox__"}
    _install(ROOT, VIOLATIONS, SandboxRefusal)  # from here on every audited call is checked
    del _install
    exec(compile(payload["code"], "<sandbox>", "exec"), ns)
    if payload.get("funcname"):
        fn = ns.get(payload["funcname"])
        if fn is None:
            raise NameError(f"function {payload['funcname']!r} is not defined by the code")
        result = fn(**payload.get("kwargs", {}))
    else:
        result = ns.get("result")
    out = {"value": _jsonable(result)}
except MemoryError:
    status, out = "refused", {"message": "MemoryError: memory limit exceeded"}
except OSError as e:
    if e.errno == 27:  # EFBIG: Python ignores SIGXFSZ, so the file-size cap surfaces here
        status, out = "refused", {"message": "file size limit exceeded"}
    elif e.errno == 30:  # EROFS: the kernel boundary stopped a write outside the sandbox dir
        status, out = "refused", {"message": f"write outside the sandbox dir (read-only): {e}"}
    else:
        status, out = "error", {"message": f"{type(e).__name__}: {str(e)[:500]}"}
except BaseException as e:
    status = "error"
    out = {"message": f"{type(e).__name__}: {str(e)[:500]}"}
if VIOLATIONS:
    status, out = "refused", {"message": "; ".join(VIOLATIONS)[:1000]}
try:
    _emit(status, **out)
except (TypeError, ValueError) as e:
    _emit("error", message=f"result is not JSON-serialisable: {e}")
"""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Resource caps for one run. Defaults suit CodeIO reference functions."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_size_mb: int = 8
    max_open_files: int = 64
    max_output_chars: int = 1_000_000
    # Modules imported before the audit hook activates, when the code mentions them.
    preload: tuple[str, ...] = ("numpy", "scipy", "sympy")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    status: str  # ok | error | timeout | refused
    value: Any = None
    message: str = ""
    elapsed_s: float = 0.0


log = logging.getLogger(__name__)

UNPRIVILEGED = 65534  # nobody / nogroup: the sandbox's identity when started as root

# Runs inside the new mount namespace, before the privileges are dropped: makes every mount
# read-only except the temp dir ($1), then execs the rest of the command line.
_SETUP = r"""
set -e
T="$1"; shift
mount --make-rprivate /
mount --bind "$T" "$T"
for m in $(awk '$6 ~ /(^|,)rw(,|$)/ {print $5}' /proc/self/mountinfo | sort -u); do
  case "$m" in *\\*) m=$(printf '%b' "$m") ;; esac  # octal escapes (e.g. \040 for a space)
  [ "$m" = "$T" ] && continue
  mount -o remount,bind,ro "$m" 2>/dev/null || echo "fst-sandbox: cannot make $m read-only" >&2
done
mount -o remount,bind,rw "$T"
cd "$T"  # the inherited cwd still points into the (now read-only) mount below the bind
exec "$@"
"""


def _kernel_prefix(tmp: str) -> list[str] | None:
    """The command prefix that runs argv inside the kernel-level sandbox, or None if unavailable."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if unshare is None or setpriv is None or not os.path.exists("/proc/self/mountinfo"):
        return None
    root = os.geteuid() == 0
    ns = [unshare, "--mount", "--net", "--ipc"] + ([] if root else ["--user", "--map-root-user"])
    if root:  # a real uid other than 0, so RLIMIT_NPROC binds; reading stays possible
        drop = [f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups",
                "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
                "--bounding-set=-all,+dac_read_search"]  # fmt: skip
    else:  # uid 0 inside the user namespace is you outside; it only loses its capabilities
        drop = ["--inh-caps=-all", "--bounding-set=-all"]
    return [*ns, "--", "/bin/sh", "-c", _SETUP, "fst-sandbox", tmp, setpriv, "--no-new-privs",
            *drop]  # fmt: skip


@functools.cache
def isolation() -> str:
    """The strongest isolation that works here (probed once per process):

    "kernel" (read-only mount namespace + network namespace + no capabilities, see the module
    docstring), else "network" (`unshare -rn`: only an empty network namespace), else
    "audit-hook" (Python-level checks only).
    """
    for mode in ("kernel", "network"):
        r = run_python("def f():\n    open('probe', 'w').write('x')\n    return 1", "f", {},
                       SandboxLimits(wall_s=20.0, cpu_s=10), _mode=mode)  # fmt: skip
        if (r.status, r.value) == ("ok", 1):
            return mode
        log.warning("sandbox: %s isolation unavailable here (%s)", mode, r.message[:300])
    return "audit-hook"


def network_isolation() -> str:
    """'unshare' if the child gets an empty network namespace, else 'audit-hook' (compat)."""
    return "unshare" if isolation() in ("kernel", "network") else "audit-hook"


def _preexec(limits: SandboxLimits):
    def fn():
        os.setsid()
        mem = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        fsz = limits.file_size_mb * 2**20
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsz, fsz))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # RLIMIT_NPROC is set by the runner itself (after the uid change; see _RUNNER).

    return fn


def run_python(
    code: str,
    funcname: str | None = None,
    kwargs: dict | None = None,
    limits: SandboxLimits = SandboxLimits(),
    *,
    _mode: str | None = None,
) -> SandboxResult:
    """Execute `code`, then call `funcname(**kwargs)` (or read a global `result`), sandboxed.

    Never raises for anything the code does; returns a SandboxResult with the JSON-able value.
    """
    mode = _mode or isolation()
    nonce = "@@SANDBOX-" + secrets.token_hex(8) + "@@"
    try:
        payload = json.dumps(
            {
                "code": code,
                "funcname": funcname,
                "kwargs": kwargs or {},
                "nonce": nonce,
                "preload": list(limits.preload),
                "kernel": mode == "kernel",
            }
        )
    except (TypeError, ValueError) as e:
        return SandboxResult("error", message=f"arguments are not JSON-serialisable: {e}")
    tmp = tempfile.mkdtemp(prefix="fst_sandbox_")
    try:
        runner = os.path.join(tmp, "_runner.py")
        with open(runner, "w") as f:
            f.write(_RUNNER)
        cmd = [sys.executable, "-I", "-B", runner]
        if mode == "kernel":
            prefix = _kernel_prefix(tmp)
            if prefix is None:
                return SandboxResult("error", message="unshare/setpriv (util-linux) not found")
            if os.geteuid() == 0:
                os.chown(tmp, UNPRIVILEGED, UNPRIVILEGED)
            cmd = [*prefix, *cmd]
        elif mode == "network":
            cmd = [shutil.which("unshare") or "unshare", "-rn", *cmd]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }
        t0 = time.monotonic()
        # stdout/stderr go to files in the temp dir, so RLIMIT_FSIZE also bounds how much the
        # child can make the caller read.
        out_path, err_path = os.path.join(tmp, "_stdout"), os.path.join(tmp, "_stderr")
        with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
            try:
                proc = subprocess.Popen(
                    cmd,
                    cwd=tmp,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=out_f,
                    stderr=err_f,
                    preexec_fn=_preexec(limits),
                    close_fds=True,
                )
            except OSError as e:
                return SandboxResult("error", message=f"could not start the sandbox process: {e}")
            try:
                proc.communicate(payload.encode(), timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                return SandboxResult(
                    "timeout",
                    message=f"wall time limit {limits.wall_s}s exceeded",
                    elapsed_s=time.monotonic() - t0,
                )
            finally:
                _kill_group(proc)
        elapsed = time.monotonic() - t0
        cap = limits.max_output_chars * 4 + 4096
        with open(out_path, "rb") as f:
            out = f.read(cap)
        with open(err_path, "rb") as f:
            f.seek(max(0, os.path.getsize(err_path) - 4096))
            err = f.read()
        return _parse(out, err, proc.returncode, nonce, limits, elapsed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _parse(out: bytes, err: bytes, rc: int, nonce: str, limits: SandboxLimits, elapsed: float):
    text = out.decode("utf-8", "replace")
    idx = text.rfind(nonce)
    if idx >= 0:
        line = text[idx + len(nonce) :].split("\n", 1)[0]
        if len(line) > limits.max_output_chars:
            return SandboxResult("refused", message="result too large", elapsed_s=elapsed)
        try:
            rec = json.loads(line)
            return SandboxResult(rec["status"], rec.get("value"), rec.get("message", ""), elapsed)
        except (ValueError, KeyError, RecursionError):
            return SandboxResult("error", message="unreadable sandbox result", elapsed_s=elapsed)
    if rc in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return SandboxResult(
            "timeout", message=f"CPU time limit {limits.cpu_s}s exceeded", elapsed_s=elapsed
        )
    if rc in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
        return SandboxResult("refused", message="file size limit exceeded", elapsed_s=elapsed)
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {rc}"]
    if "[Errno 27]" in tail[0]:
        return SandboxResult("refused", message="file size limit exceeded", elapsed_s=elapsed)
    if "MemoryError" in tail[0]:
        return SandboxResult("refused", message="memory limit exceeded", elapsed_s=elapsed)
    return SandboxResult(
        "error", message=f"sandbox process died: {tail[0][:300]}", elapsed_s=elapsed
    )
