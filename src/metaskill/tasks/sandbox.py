"""Run untrusted Python in a subprocess sandbox: :func:`run_code`.

Used by the code-execution Verifier and by methods that execute model-written code
(meta-prompting's "Python expert"). Isolation, layer by layer, as far as the OS allows:

* **Working directory.** A fresh temporary directory is the child's cwd, ``HOME`` and
  ``TMPDIR``; it is deleted afterwards (unless ``keep_dir``).
* **Interpreter.** ``python -I`` (isolated mode: no ``PYTHON*`` variables, no user site,
  no script directory on ``sys.path``) and, by default, ``-S`` too (no site-packages:
  the standard library only; pass ``site_packages=True`` to allow installed packages).
  The environment is replaced by a minimal one (no inherited secrets).
* **Resources.** ``resource.setrlimit`` (set by the child before the code runs, soft and
  hard, so they cannot be raised; no ``preexec_fn``, so it is safe to call from threads):
  address space (``mem_mb``), CPU seconds, the size of any file written (``file_mb``),
  open files, no core dumps. Wall time is enforced by
  the parent, which kills the child's whole process group.
* **Network.** If ``unshare`` can create a network namespace (``unshare -rn``, or ``-n``
  as root), the child runs in one with no interfaces but a down loopback: no network.
  Otherwise (no ``unshare``, or user namespaces disabled) the audit hook below still
  refuses sockets. Which layers applied is reported in :attr:`CodeResult.isolation`.
* **Files and processes.** A ``sys.addaudithook`` hook installed before the code runs
  refuses: writing, creating, renaming or deleting anything outside the directory;
  reading outside it except the interpreter's own library folders; listing outside
  directories; sockets; starting processes (``subprocess``, ``os.system``, ``os.exec*``,
  ``fork``); signalling other processes; and loading C libraries through ``ctypes``.

Limits: an audit hook is not a security boundary against native code (a C extension
already installed could bypass it, hence ``-S`` by default), and without ``unshare`` the
network block rests on that hook alone. For hostile code at scale, run the whole
verifier inside a container or VM.

Example:
    >>> r = run_code("print(6 * 7)", timeout_s=10)
    >>> r.ok, r.stdout.strip()
    (True, '42')
    >>> run_code("open('/etc/owned', 'w')", timeout_s=10).ok
    False
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_MAX_OUTPUT = 64_000

# The hook runs inside the child before the user's code; it gets the sandbox root.
_BOOT = r'''
import os, sys
def _metaskill_sandbox(root):
    realpath, sep = os.path.realpath, os.sep
    root = realpath(root)
    reads = [root] + [realpath(p) for p in sys.path if p] + [
        realpath(sys.prefix), realpath(sys.base_prefix), realpath(sys.exec_prefix),
        "/dev/null", "/dev/urandom", "/dev/random", "/usr/share/zoneinfo"]
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    def under(path, roots):
        if isinstance(path, int):
            return True
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            path = os.fspath(path)
        p = realpath(os.path.join(root, path))
        return any(p == r or p.startswith(r.rstrip(sep) + sep) for r in roots)
    MUTATE = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown",
              "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree",
              "shutil.move", "shutil.copyfile", "shutil.copytree", "os.mkfifo", "os.mknod"}
    LIST = {"os.listdir", "os.scandir", "os.chdir", "glob.glob", "os.walk", "os.fwalk"}
    DENY = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
            "pty.spawn", "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill",
            "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
            "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
            "socket.__new__", "resource.setrlimit", "os.chroot", "sys.remote_exec"}
    CTYPES = {"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata",
              "ctypes.cdata/buffer", "ctypes.call_function", "ctypes.string_at",
              "ctypes.wstring_at", "ctypes.addressof"}
    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return
            writing = bool(flags & WRITE) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            if not under(path, [root] if writing else reads):
                raise PermissionError(f"sandbox: {'writing' if writing else 'reading'} "
                                      f"{path!r} outside the sandbox directory is not allowed")
        elif event in MUTATE:
            for a in args:
                if isinstance(a, (str, bytes, os.PathLike)) and not under(a, [root]):
                    raise PermissionError(f"sandbox: {event} on {a!r} outside the sandbox "
                                          "directory is not allowed")
        elif event in LIST:
            a = args[0] if args else "."
            if isinstance(a, (str, bytes, os.PathLike)) and not under(a, reads):
                raise PermissionError(f"sandbox: {event} {a!r} is not allowed")
        elif event in DENY:
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event in CTYPES:
            raise ImportError(f"sandbox: {event} is not allowed")
        elif event == "import" and args and args[0] in ("_posixsubprocess",):
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
    sys.addaudithook(hook)
def _metaskill_limits(mem_mb, cpu_s, file_mb):
    import resource
    for what, value in ((resource.RLIMIT_AS, mem_mb << 20), (resource.RLIMIT_CPU, cpu_s),
                        (resource.RLIMIT_FSIZE, file_mb << 20), (resource.RLIMIT_NOFILE, 64),
                        (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass
_metaskill_limits(*(int(a) for a in sys.argv[1:4]))
del _metaskill_limits
_root = os.getcwd()
_metaskill_sandbox(_root)
del _metaskill_sandbox
sys.argv = ["main.py"]
with open("main.py", encoding="utf-8") as _f:
    _src = _f.read()
_g = {"__name__": "__main__", "__file__": os.path.join(_root, "main.py"),
      "__builtins__": __builtins__}
del _f, _root
exec(compile(_src, "main.py", "exec"), _g)
'''


@dataclass
class CodeResult:
    """What happened when sandboxed code ran.

    Attributes:
        returncode: the exit status (negative: killed by that signal; None: never ran).
        stdout: standard output (truncated to 64 kB).
        stderr: standard error (truncated to 64 kB).
        timed_out: the wall-time or CPU limit was hit.
        memory_exceeded: the memory limit was hit (a MemoryError in the child).
        duration_s: wall time.
        isolation: the layers that applied (``tempdir``, ``python-isolated``,
            ``no-site-packages``, ``rlimits``, ``netns``, ``audit-hook``).
    """

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    memory_exceeded: bool = False
    duration_s: float = 0.0
    isolation: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if the code exited with status 0 within its limits."""
        return self.returncode == 0 and not self.timed_out and not self.memory_exceeded

    def summary(self) -> str:
        """One line: status and the last line of stderr, for a Verdict reason."""
        if self.timed_out:
            return "timed out"
        if self.memory_exceeded:
            return "memory limit exceeded"
        if self.returncode == 0:
            return "exited 0"
        last = next((ln for ln in reversed(self.stderr.strip().splitlines()) if ln.strip()), "")
        return f"exit {self.returncode}: {last[:200]}"


@functools.lru_cache(maxsize=1)
def network_isolation_prefix() -> tuple[str, ...]:
    """The command prefix that puts a child in an empty network namespace, or ``()``.

    Probed once per process: ``unshare -rn`` (unprivileged user namespaces), then
    ``unshare -n`` (root).
    """
    exe = shutil.which("unshare")
    if not exe:
        return ()
    for flags in ("-rn", "-n"):
        try:
            r = subprocess.run([exe, flags, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return (exe, flags)
    return ()


def run_code(
    code: str,
    timeout_s: float = 10.0,
    mem_mb: int = 512,
    *,
    stdin: str | None = None,
    files: dict[str, str] | None = None,
    site_packages: bool = False,
    network: bool = False,
    file_mb: int = 16,
    python: str | None = None,
    keep_dir: bool = False,
) -> CodeResult:
    """Run Python ``code`` in a sandbox (see the module docstring for what that means).

    Args:
        code: the program, run as ``main.py`` in a fresh temporary directory.
        timeout_s: wall-time limit in seconds (the CPU limit is the same, rounded up).
        mem_mb: address-space limit in MiB.
        stdin: text fed to standard input.
        files: extra files to create in the directory first (name -> content).
        site_packages: allow installed packages (numpy, sympy ...); the standard library
            only by default.
        network: allow the network namespace to be shared (the audit hook still refuses
            sockets); False puts the child in an empty namespace where the OS allows.
        file_mb: largest file the child may write, in MiB.
        python: the interpreter (default: this one).
        keep_dir: keep the directory (its path is in ``isolation`` as ``dir=...``).

    Returns:
        A :class:`CodeResult`; it never raises for anything the code does.

    Example:
        >>> run_code("while True: pass", timeout_s=1).timed_out
        True
    """
    workdir = Path(tempfile.mkdtemp(prefix="metaskill-code-")).resolve()
    for name, content in (files or {}).items():
        target = (workdir / name).resolve()
        if workdir not in target.parents:
            shutil.rmtree(workdir, ignore_errors=True)
            raise ValueError(f"file name {name!r} escapes the sandbox directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    (workdir / "main.py").write_text(code, encoding="utf-8")
    flags = ["-I"] if site_packages else ["-I", "-S"]
    limits = [str(mem_mb), str(max(1, math.ceil(timeout_s))), str(file_mb)]
    cmd = [python or sys.executable, *flags, "-c", _BOOT, *limits]
    isolation = ["tempdir", "python-isolated", "rlimits", "audit-hook"]
    if not site_packages:
        isolation.append("no-site-packages")
    prefix = () if network else network_isolation_prefix()
    if prefix:
        cmd = [*prefix, *cmd]
        isolation.append("netns")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    timed_out = False
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:
        shutil.rmtree(workdir, ignore_errors=True)
        return CodeResult(None, "", f"could not start the interpreter: {e}", isolation=isolation)
    try:
        out, err = proc.communicate(stdin.encode() if stdin is not None else None,
                                    timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    finally:
        duration = time.perf_counter() - start
        if not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    if keep_dir:
        isolation.append(f"dir={workdir}")
    rc = proc.returncode
    stdout = out.decode("utf-8", "replace")[:_MAX_OUTPUT]
    stderr = err.decode("utf-8", "replace")[:_MAX_OUTPUT]
    if rc in (-signal.SIGXCPU, -signal.SIGKILL) and not timed_out and duration >= timeout_s * 0.9:
        timed_out = True
    if rc == -signal.SIGXCPU:
        timed_out = True
    mem = "MemoryError" in stderr or "Cannot allocate memory" in stderr
    return CodeResult(rc, stdout, stderr, timed_out=timed_out, memory_exceeded=mem and rc != 0,
                      duration_s=duration, isolation=isolation)
