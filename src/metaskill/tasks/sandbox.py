"""Run untrusted Python in an operating-system sandbox: :func:`run_code`.

Used by the code-execution Verifier and by methods that execute model-written code
(meta-prompting's "Python expert"). The code is written by a model, so it is treated as
hostile. The layers, outermost first (:attr:`CodeResult.isolation` lists those that
applied to a run):

* **bubblewrap** (``bwrap``, Debian package ``bubblewrap``) -- the boundary:

  - ``userns``: a new user namespace; the code runs as uid/gid 65534 (nobody), never root,
    and cannot create further user namespaces (``--disable-userns``);
  - ``no-caps``: every capability dropped (``--cap-drop ALL``);
  - ``mountns``: a fresh mount namespace whose root is a read-only tmpfs holding only
    ``/usr`` (read-only; ``/bin``, ``/lib*``, ``/sbin`` as the host's symlinks or
    read-only binds), the interpreter's prefix (read-only; for ``site_packages=True``
    also the virtual environment), bubblewrap's minimal ``/dev`` (null, zero, full,
    random, urandom, tty, pts, shm) and the sandbox directory -- the only writable
    path. ``/etc``, ``/proc``, ``/sys``, ``/tmp`` (other than the sandbox directory)
    and the home folders are absent; no file from ``/etc`` is bound (Python with
    ``-I -S`` needs none; the dynamic loader finds libc in its built-in paths without
    ``/etc/ld.so.cache``). When the interpreter
    lives under a home folder (pyenv: ``/root/.pyenv/versions/X``), only that prefix is
    bound, nothing else of the home folder;
  - ``pidns``: a new PID namespace (the code sees no other process; when its init dies,
    the kernel kills everything in it), plus new IPC, UTS and cgroup namespaces;
  - ``netns``: a new network namespace with only a loopback (no route out, no host port
    is reachable), unless ``network=True``;
  - ``seccomp``: a seccomp filter built with libseccomp (Debian package ``libseccomp2``,
    called through ``ctypes`` in the parent; no Python dependency) and handed to
    ``bwrap --seccomp``. It allows by default and refuses with ``EPERM``: mount and
    namespace calls (``mount``, ``umount2``, ``pivot_root``, ``chroot``, ``unshare``,
    ``setns``, ``clone`` with any namespace flag; ``clone3`` gets ``ENOSYS`` so libc
    falls back to ``clone``, whose flags can be checked), new processes (``fork``,
    ``vfork``, ``clone`` without ``CLONE_THREAD``: threads work, ``os.system`` and
    ``subprocess`` do not, and a fork loop cannot start), ``ptrace`` and
    ``process_vm_*``, kernel modules and ``kexec``, ``bpf``, ``perf_event_open``,
    ``userfaultfd``, ``io_uring_*``, keyrings, ``open_by_handle_at``, clock and
    system-wide settings, and -- without ``network`` -- every socket family but
    ``AF_UNIX``. Syscalls of a foreign ABI (i386, x32) kill the process. It is a deny
    list, not an allow list, so that ordinary Python keeps working; ``execve`` stays
    allowed (bwrap itself execs the interpreter under the filter). Without libseccomp
    the run goes on under bwrap and ``seccomp`` is missing from ``isolation``;
  - ``--die-with-parent`` (the sandbox dies with metaskill) and ``--new-session`` (no
    controlling terminal to inject keystrokes into).
* **tempdir**: a fresh temporary directory is the child's cwd, ``HOME`` and ``TMPDIR``;
  it is deleted afterwards (unless ``keep_dir``).
* **python-isolated** / **no-site-packages**: ``python -I`` (no ``PYTHON*`` variables,
  no user site, no script directory on ``sys.path``) and, by default, ``-S`` (the standard
  library only; ``site_packages=True`` allows installed packages). The environment is
  replaced by a minimal one (no inherited secrets).
* **rlimits**: set by the child before the code runs, soft and hard, so they cannot be
  raised: address space (``mem_mb``), CPU seconds, the size of any file written
  (``file_mb``), open files, no core dumps, and at most 32 processes and threads
  (``RLIMIT_NPROC``; under bwrap it counts the sandbox's own user namespace only). The
  kernel does not apply ``RLIMIT_NPROC`` to host root, and bubblewrap maps the sandbox's
  uid 65534 to the uid that started it, so when metaskill runs as root it is the seccomp
  filter that stops a fork loop.
  Wall time is enforced by the parent, which kills the child's process group (under
  bwrap that kills the namespace's init, and with it every process in the sandbox).
* **audit-hook**: a ``sys.addaudithook`` hook installed before the code runs refuses:
  writing, creating, renaming or deleting anything outside the directory; reading
  outside it except the interpreter's library folders; listing outside directories;
  sockets; starting processes (``subprocess``, ``os.system``, ``os.exec*``, ``fork``);
  signalling; and ``ctypes``. It is a second layer only: Python code can reach and
  disarm it (``dir_fd`` plus a symlink, or its closure through ``gc``), which is why the
  boundary is bubblewrap.

**Where bubblewrap is missing or the kernel refuses namespaces** (no unprivileged user
namespaces, a container without ``CAP_SYS_ADMIN``), :func:`run_code` raises
:class:`SandboxUnavailableError` (one line naming the package ``bubblewrap``) instead of
running the code, unless the caller opts into the weaker **hook-only** mode:
``run_code(..., mode="hook-only")``, or for every caller at once (the verifier, the
meta-prompting Python expert, the CLI) the environment variable
``METASKILL_SANDBOX=hook-only``. Hook-only keeps every layer above but bubblewrap, plus
a network namespace from ``unshare`` where it can create one (``netns``); ``isolation``
then holds ``hook-only``. In hook-only mode a process running as root is not bound by
``RLIMIT_NPROC`` and the audit hook is the only guard of the file system: use it only
for code you trust.

Limits (even with bubblewrap): the sandbox shares the host kernel, so a kernel bug
reachable through an allowed syscall is an escape; ``/usr`` is readable; CPU time is
bounded, CPU share is not; when metaskill runs as root the sandbox's uid is host root
outside its namespaces (nothing it can reach is writable, but a mistake in the binds
would be a root write). Without libseccomp, programs under ``/usr`` can be started
inside the sandbox and, as root, nothing but the wall-clock kill bounds a fork loop.
For hostile code at scale, run the whole verifier inside a VM as well.

Example:
    >>> r = run_code("print(6 * 7)", timeout_s=10)
    >>> r.ok, r.stdout.strip()
    (True, '42')
    >>> run_code("open('/etc/owned', 'w')", timeout_s=10).ok
    False
"""

from __future__ import annotations

import ctypes
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

from metaskill.core.errors import MetaskillError

_MAX_OUTPUT = 64_000
_NPROC = 32
_NOBODY = "65534"
MODES = ("bwrap", "hook-only")
ENV_VAR = "METASKILL_SANDBOX"

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
def _metaskill_limits(mem_mb, cpu_s, file_mb, nproc):
    import resource
    for what, value in ((resource.RLIMIT_AS, mem_mb << 20), (resource.RLIMIT_CPU, cpu_s),
                        (resource.RLIMIT_FSIZE, file_mb << 20), (resource.RLIMIT_NOFILE, 64),
                        (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, nproc)):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass
_metaskill_limits(*(int(a) for a in sys.argv[1:5]))
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


class SandboxUnavailableError(MetaskillError, RuntimeError):
    """bubblewrap cannot run here and hook-only mode was not chosen; no code was run."""


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
        isolation: the layers that applied: under bubblewrap ``bwrap``, ``userns``,
            ``no-caps``, ``mountns``, ``pidns``, ``netns`` (unless ``network``),
            ``seccomp`` (where libseccomp is present); always ``tempdir``,
            ``python-isolated``, ``rlimits``, ``audit-hook`` and, by default,
            ``no-site-packages``; in the opt-in weaker mode ``hook-only`` (and ``netns``
            where ``unshare`` works).
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


def sandbox_mode(mode: str | None = None) -> str:
    """The sandbox mode: ``mode`` if given, else ``$METASKILL_SANDBOX``, else ``bwrap``.

    Raises:
        SandboxUnavailableError: for a value other than ``bwrap`` or ``hook-only``.

    Example:
        >>> sandbox_mode("hook-only")
        'hook-only'
    """
    chosen = mode if mode is not None else (os.environ.get(ENV_VAR) or "bwrap")
    if chosen not in MODES:
        raise SandboxUnavailableError(
            f"unknown sandbox mode {chosen!r} (from {'mode=' if mode else ENV_VAR}); "
            f"use one of: {', '.join(MODES)}")
    return chosen


@functools.lru_cache(maxsize=1)
def network_isolation_prefix() -> tuple[str, ...]:
    """The command prefix that puts a child in an empty network namespace, or ``()``.

    Used by hook-only mode only. Probed once per process: ``unshare -rn`` (unprivileged
    user namespaces), then ``unshare -n`` (root).
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


def _namespace_flags(network: bool) -> list[str]:
    flags = ["--unshare-user", "--uid", _NOBODY, "--gid", _NOBODY, "--disable-userns",
             "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--cap-drop", "ALL", "--die-with-parent", "--new-session"]
    return flags if network else [*flags, "--unshare-net"]


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox code here, or None if it can (probed once).

    Example:
        >>> bwrap_problem() is None or "bubblewrap" in bwrap_problem()
        True
    """
    exe = shutil.which("bwrap")
    if not exe:
        return ("code execution needs bubblewrap: install the Debian package 'bubblewrap' "
                f"(apt-get install bubblewrap), or set {ENV_VAR}=hook-only to run model-written "
                "code behind the weaker audit hook only")
    cmd = [exe, *_namespace_flags(False), "--ro-bind", "/", "/", "true"]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        why = str(e)
    else:
        if r.returncode == 0:
            return None
        lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else f"exit {r.returncode}"
    return (f"bubblewrap cannot create its namespaces here ({why[:200]}): allow unprivileged "
            "user namespaces, or reinstall the Debian package 'bubblewrap', or set "
            f"{ENV_VAR}=hook-only to run model-written code behind the weaker audit hook only")


# ---- seccomp (libseccomp through ctypes, in the parent) -------------------------------------

_ALLOW = 0x7FFF0000
_EPERM, _ENOSYS = 1, 38
_CMP_NE, _CMP_MASKED_EQ = 1, 7
_AF_UNIX = 1
_CLONE_THREAD = 0x00010000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
_CLONE_NS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
             0x40000000, 0x00000080)
_DENIED = (
    "mount umount umount2 pivot_root chroot unshare setns move_mount open_tree fsopen "
    "fsconfig fsmount fspick mount_setattr ptrace process_vm_readv process_vm_writev kcmp "
    "pidfd_getfd kexec_load kexec_file_load init_module finit_module delete_module bpf "
    "perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register keyctl "
    "add_key request_key open_by_handle_at name_to_handle_at reboot swapon swapoff syslog "
    "acct quotactl quotactl_fd settimeofday clock_settime clock_adjtime adjtimex iopl "
    "ioperm lookup_dcookie vhangup personality uselib fanotify_init nfsservctl"
).split()


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@functools.lru_cache(maxsize=2)
def seccomp_program(network: bool) -> bytes | None:
    """The compiled BPF filter handed to ``bwrap --seccomp``, or None without libseccomp.

    Args:
        network: True keeps sockets of every family; False allows only ``AF_UNIX``.

    Example:
        >>> prog = seccomp_program(False)
        >>> prog is None or len(prog) % 8 == 0
        True
    """
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    ctx = lib.seccomp_init(_ALLOW)
    if not ctx:
        return None

    def rule(name: str, action: int, *cmps: tuple[int, int, int, int]) -> bool:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not on this architecture (fork and vfork on aarch64)
            return name not in ("clone", "clone3", "socket", "mount", "ptrace", "unshare")
        arr = (_ArgCmp * max(1, len(cmps)))(*[_ArgCmp(*c) for c in cmps])
        return lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr) == 0

    try:
        errno_eperm, errno_enosys = 0x00050000 | _EPERM, 0x00050000 | _ENOSYS
        ok = all([rule(name, errno_eperm) for name in _DENIED])
        ok &= all(rule("clone", errno_eperm, (0, _CMP_MASKED_EQ, flag, flag))
                  for flag in _CLONE_NS)
        ok &= rule("clone3", errno_enosys)
        # new processes (not threads): as root the sandbox's uid maps to host root, which
        # the kernel exempts from RLIMIT_NPROC, so this is what bounds a fork loop there
        ok &= rule("clone", errno_eperm, (0, _CMP_MASKED_EQ, _CLONE_THREAD, 0))
        ok &= rule("fork", errno_eperm) and rule("vfork", errno_eperm)
        if not network:
            ok &= rule("socket", errno_eperm, (0, _CMP_NE, _AF_UNIX, 0))
        if not ok:
            return None
        with tempfile.TemporaryFile() as f:
            if lib.seccomp_export_bpf(ctx, f.fileno()) != 0:
                return None
            f.seek(0)
            return f.read()
    finally:
        lib.seccomp_release(ctx)


# ---- bubblewrap command -----------------------------------------------------------------------

def _prefix_of(exe: str) -> str:
    """The installation prefix of an interpreter binary (``<prefix>/bin/python``)."""
    return str(Path(os.path.realpath(exe)).parent.parent)


def _bwrap_command(exe: str, workdir: Path, *, site_packages: bool, network: bool,
                   seccomp_fd: int | None) -> list[str]:
    cmd = [shutil.which("bwrap") or "bwrap", *_namespace_flags(network)]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    roots = {_prefix_of(exe)}
    if site_packages:
        roots |= {sys.prefix, sys.base_prefix, sys.exec_prefix,
                  str(Path(os.path.abspath(exe)).parent.parent)}
    for root in sorted(os.path.realpath(r) for r in roots):
        if root == "/usr" or root.startswith("/usr/") or root == "/":
            continue
        cmd += ["--ro-bind", root, root]
    cmd += ["--dev", "/dev", "--bind", str(workdir), str(workdir), "--chdir", str(workdir),
            "--remount-ro", "/"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    return cmd


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
    mode: str | None = None,
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
        network: keep the host's network namespace and allow every socket family in the
            seccomp filter (the audit hook still refuses sockets); False: no network.
        file_mb: largest file the child may write, in MiB.
        python: the interpreter (default: this one).
        keep_dir: keep the directory (its path is in ``isolation`` as ``dir=...``).
        mode: ``bwrap`` (the default) or ``hook-only`` (the weaker opt-in mode); None
            reads ``$METASKILL_SANDBOX``.

    Returns:
        A :class:`CodeResult`; it never raises for anything the code does.

    Raises:
        SandboxUnavailableError: bubblewrap cannot run here and ``hook-only`` was not
            chosen (nothing was run).

    Example:
        >>> run_code("while True: pass", timeout_s=1).timed_out
        True
    """
    chosen = sandbox_mode(mode)
    if chosen == "bwrap" and (problem := bwrap_problem()):
        raise SandboxUnavailableError(problem)
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
    limits = [str(mem_mb), str(max(1, math.ceil(timeout_s))), str(file_mb), str(_NPROC)]
    exe = python or (sys.executable if site_packages else os.path.realpath(sys.executable))
    cmd = [exe, *flags, "-c", _BOOT, *limits]
    isolation = ["tempdir", "python-isolated", "rlimits", "audit-hook"]
    if not site_packages:
        isolation.append("no-site-packages")
    pass_fds: tuple[int, ...] = ()
    if chosen == "bwrap":
        program = seccomp_program(network)
        if program is not None:
            read_fd, write_fd = os.pipe()
            os.write(write_fd, program)  # a few kB: fits the pipe buffer
            os.close(write_fd)
            pass_fds = (read_fd,)
        cmd = [*_bwrap_command(exe, workdir, site_packages=site_packages, network=network,
                               seccomp_fd=pass_fds[0] if pass_fds else None), *cmd]
        isolation = ["bwrap", "userns", "no-caps", "mountns", "pidns",
                     *([] if network else ["netns"]), *(["seccomp"] if pass_fds else []),
                     *isolation]
    else:
        isolation.append("hook-only")
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
            pass_fds=pass_fds,
        )
    except OSError as e:
        shutil.rmtree(workdir, ignore_errors=True)
        return CodeResult(None, "", f"could not start the interpreter: {e}", isolation=isolation)
    finally:
        for fd in pass_fds:
            os.close(fd)
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
