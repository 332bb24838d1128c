"""Hostile code against :func:`metaskill.tasks.sandbox.run_code` under bubblewrap.

Each attack is plain Python, written as an attacker would, and each runs twice: as is
(bubblewrap and the audit hook) and after ``DISARM`` has switched the audit hook off
through the garbage collector (bubblewrap alone). Every run must fail, and each test checks
the reason the OS gave. The two attacks that beat the hook (dir_fd plus a symlink, and the
gc attack) also run in hook-only mode as controls that they really work there: if a
control stops working, the attack code is broken and the bubblewrap test proves nothing.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from metaskill.tasks.sandbox import CodeResult, bwrap_problem, run_code

pytestmark = pytest.mark.skipif(
    bwrap_problem() is not None,
    reason=f"bubblewrap cannot run here, so there is no OS boundary to attack: {bwrap_problem()}")

PROJECT = Path(__file__).resolve().parents[1]

# Finds the audit hook's closure through the garbage collector, empties its deny sets and
# points its root at "/": after this the hook allows everything.
DISARM = r'''
import gc
def _disarm():
    for obj in gc.get_objects():
        code = getattr(obj, "__code__", None)
        if code is None or not getattr(obj, "__closure__", None) or "DENY" not in code.co_freevars:
            continue
        for name, cell in zip(code.co_freevars, obj.__closure__):
            value = cell.cell_contents
            if isinstance(value, set):
                value.clear()
            elif name == "root":
                cell.cell_contents = "/"
            elif name == "reads":
                value[:] = ["/"]
        return True
    return False
assert _disarm(), "hook not found"
print("hook disarmed", flush=True)
'''

# A symlink inside the sandbox folder makes the hook resolve a path relative to the folder
# while the kernel resolves it relative to a dir_fd elsewhere (a stdlib folder, which the
# hook lets the code open): "email/../../.." is deep inside the folder for the hook and
# "/" for the kernel.
DIRFD = r'''
import os, sys
lib = os.path.join(sys.prefix, "lib", "python%d.%d" % sys.version_info[:2])
depth = len([p for p in lib.split("/") if p]) + 1
deep = "/".join("x%d" % i for i in range(depth + 2))
os.makedirs(deep)
os.symlink(deep, "email")
fd = os.open(lib, os.O_RDONLY)
up = "/".join([".."] * depth)
def outside(path, flags=os.O_RDONLY):
    return os.open("email/" + up + path, flags, 0o644, dir_fd=fd)
'''

ARMED = pytest.mark.parametrize("disarm", [False, True], ids=["hook-on", "hook-disarmed"])


def attack(code: str, disarm: bool = False, mode: str = "bwrap", **kw: object) -> CodeResult:
    """Run ``code`` in the sandbox, after switching the audit hook off when ``disarm``."""
    kw.setdefault("timeout_s", 10)
    r = run_code((DISARM if disarm else "") + code, mode=mode, **kw)  # type: ignore[arg-type]
    if disarm and mode == "bwrap":
        assert "hook disarmed" in r.stdout, r.stderr  # the attack really ran without the hook
    return r


@functools.lru_cache(maxsize=1)
def has_seccomp() -> bool:
    """Whether runs here get the seccomp layer (libseccomp present)."""
    return "seccomp" in run_code("pass", timeout_s=10).isolation


def last_error(r: CodeResult) -> str:
    """The reason the sandbox gave: the last line of stderr."""
    return next((ln for ln in reversed(r.stderr.splitlines()) if ln.strip()), "")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the sandbox with a planted secret."""
    (tmp_path / "secret.txt").write_text("TOPSECRET")
    return tmp_path


def test_layers_recorded() -> None:
    r = run_code("print(1)", timeout_s=10)
    assert r.ok
    assert {"bwrap", "userns", "no-caps", "mountns", "pidns", "netns", "audit-hook",
            "rlimits"} <= set(r.isolation)
    assert "hook-only" not in r.isolation


def test_what_the_code_sees_with_the_hook_off() -> None:
    r = attack("import os\nprint(os.getuid(), os.getgid(), os.getpid())\n"
               "print(sorted(os.listdir('/')))\n"
               "print(os.path.exists('/etc'), os.path.exists('/proc/1'), "
               "os.path.exists('/work'), os.path.exists('/home'))", disarm=True)
    assert r.ok, r.stderr
    ids, top, exists = r.stdout.splitlines()[1:4]
    uid, gid, pid = (int(x) for x in ids.split())
    assert (uid, gid) == (65534, 65534) and pid < 10  # nobody, in its own PID namespace
    assert "etc" not in top and "home" not in top and "proc" not in top
    assert exists == "False False False False"


def test_dir_fd_symlink_control_beats_the_hook_alone(outside: Path) -> None:
    r = attack(DIRFD + f"print(os.read(outside({str(outside / 'secret.txt')!r}), 100))\n"
               f"os.write(outside({str(outside / 'owned.txt')!r}, "
               "os.O_WRONLY | os.O_CREAT), b'owned')", mode="hook-only")
    assert r.ok and "TOPSECRET" in r.stdout and (outside / "owned.txt").exists(), r.stderr


@ARMED
def test_dir_fd_symlink_read_and_write_outside(outside: Path, disarm: bool) -> None:
    for path in (str(outside / "secret.txt"), "/etc/shadow"):
        r = attack(DIRFD + f"print(os.read(outside({path!r}), 100))", disarm)
        assert not r.ok and "TOPSECRET" not in r.stdout and "root:" not in r.stdout
        assert "FileNotFoundError" in last_error(r), r.stderr  # not in the mount namespace
    r = attack(DIRFD + f"os.write(outside({str(outside / 'owned.txt')!r}, "
               "os.O_WRONLY | os.O_CREAT), b'owned')", disarm)
    assert not r.ok and not (outside / "owned.txt").exists()
    assert "FileNotFoundError" in last_error(r), r.stderr


def test_gc_attack_control_beats_the_hook_alone(outside: Path) -> None:
    target = outside / "gc-system.txt"
    r = attack(f"import os\nos.system('echo owned > {target}')\n"
               f"open({str(outside / 'gc-open.txt')!r}, 'w').write('owned')", disarm=True,
               mode="hook-only")
    assert r.ok and target.exists() and (outside / "gc-open.txt").exists(), r.stderr


def test_gc_attack_then_system_and_write_outside(outside: Path) -> None:
    target = outside / "gc-system.txt"
    r = attack(f"import os\nprint('status', os.system('echo owned > {target}'))", disarm=True)
    assert not target.exists()
    if has_seccomp():  # seccomp refuses the shell's process; glibc's system() says exit 127
        assert "status 32512" in r.stdout, r.stdout + r.stderr
    else:  # the shell runs inside the sandbox, where the folder does not exist
        assert "status 0" not in r.stdout and "nonexistent" in r.stderr, r.stdout + r.stderr
    r = attack(f"open({str(outside / 'gc-open.txt')!r}, 'w').write('owned')", disarm=True)
    assert not r.ok and not (outside / "gc-open.txt").exists()
    assert "FileNotFoundError" in last_error(r), r.stderr


@ARMED
def test_read_etc_shadow(disarm: bool) -> None:
    r = attack("print(open('/etc/shadow').read())", disarm)
    assert not r.ok and "root:" not in r.stdout
    why = last_error(r)
    assert ("FileNotFoundError" in why) if disarm else ("PermissionError: sandbox" in why), why


@ARMED
def test_write_to_the_project_folder(disarm: bool) -> None:
    target = PROJECT / f".sandbox-attack-{uuid.uuid4().hex}"
    try:
        r = attack(f"open({str(target)!r}, 'w').write('owned')", disarm)
        assert not r.ok and not target.exists()
        why = last_error(r)
        assert ("FileNotFoundError" in why) if disarm else ("PermissionError: sandbox" in why)
        r = attack(DIRFD + f"os.write(outside({str(target)!r}, os.O_WRONLY | os.O_CREAT), b'x')",
                   disarm)
        assert not r.ok and not target.exists() and "FileNotFoundError" in last_error(r)
    finally:
        target.unlink(missing_ok=True)


@ARMED
def test_os_system(disarm: bool, outside: Path) -> None:
    marker = outside / "system-marker"
    r = attack(f"import os\nstatus = os.system('touch {marker}')\nprint('status', status)\n"
               "assert status == 0", disarm)
    assert not r.ok and not marker.exists()
    if disarm and has_seccomp():  # seccomp refuses the shell's process: exit 127
        assert "status 32512" in r.stdout and "touch" not in r.stderr, r.stdout + r.stderr
    elif disarm:  # the shell runs inside the sandbox, where the folder does not exist
        assert "cannot touch" in r.stderr, r.stdout + r.stderr
    else:
        assert "PermissionError: sandbox: os.system" in last_error(r)


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on 127.0.0.1 that records what reaches it; stopped afterwards."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(1)
                try:
                    got.append(conn.recv(100) or b"<connected>")
                except OSError:
                    got.append(b"<connected>")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], got
    stop.set()
    thread.join(timeout=5)
    server.close()


@ARMED
def test_socket_to_a_listening_loopback_port(listener: tuple[int, list[bytes]],
                                             disarm: bool) -> None:
    port, got = listener
    probe = socket.create_connection(("127.0.0.1", port), timeout=2)  # it does listen
    probe.sendall(b"probe")
    probe.close()
    deadline = time.time() + 5
    while not got and time.time() < deadline:
        time.sleep(0.05)
    assert got == [b"probe"]
    r = attack("import socket\n"
               f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               "s.sendall(b'owned')", disarm)
    time.sleep(0.3)
    assert not r.ok and got == [b"probe"]
    why = last_error(r)
    if disarm:  # seccomp refuses AF_INET; without it the empty network namespace would
        assert "Operation not permitted" in why or "Connection refused" in why, why
    else:
        assert "PermissionError: sandbox: socket" in why, why


@ARMED
def test_fork_loop(disarm: bool) -> None:
    if disarm and not has_seccomp() and os.getuid() == 0:
        pytest.skip("without seccomp nothing but the wall-clock kill bounds a fork loop of "
                    "host root (the kernel exempts root from RLIMIT_NPROC)")
    r = attack("import os, time\nn = 0\ntry:\n    while True:\n"
               "        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n"
               "        n += 1\nexcept OSError as e:\n    print('forks', n)\n    raise",
               disarm, timeout_s=20)
    assert not r.ok and r.duration_s < 15  # any sleeping child dies with the sandbox
    if disarm:  # seccomp refuses new processes; without it, RLIMIT_NPROC=32 (non-root)
        forks = int(r.stdout.split("forks")[1].split()[0])
        assert forks < 32, r.stdout + r.stderr
        why = last_error(r)
        assert ("PermissionError" if has_seccomp() else "BlockingIOError") in why, why
    else:
        assert "PermissionError: sandbox: os.fork" in last_error(r)


@ARMED
def test_8gb_allocation(disarm: bool) -> None:
    r = attack("x = bytearray(8 * 1024 ** 3)\nprint('allocated')", disarm)
    assert not r.ok and r.memory_exceeded and "allocated" not in r.stdout
    assert "MemoryError" in last_error(r)


@ARMED
def test_endless_loop(disarm: bool) -> None:
    # a thread keeps writing a heartbeat into the sandbox folder while the main loop spins
    code = ("import threading, time\ndef beat():\n    while True:\n"
            "        with open('beat', 'a') as f:\n            f.write('.')\n"
            "        time.sleep(0.05)\nthreading.Thread(target=beat, daemon=True).start()\n"
            "while True:\n    pass")
    r = attack(code, disarm, timeout_s=1.5, keep_dir=True)
    workdir = Path(next(x for x in r.isolation if x.startswith("dir="))[4:])
    try:
        assert r.timed_out and not r.ok and r.summary() == "timed out" and r.duration_s < 5
        beats = (workdir / "beat").read_text()
        assert beats  # it ran ...
        time.sleep(0.5)
        assert (workdir / "beat").read_text() == beats  # ... and nothing of it is left
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_seccomp_refuses_namespace_and_mount_calls() -> None:
    r = run_code("print(1)", timeout_s=10)
    if "seccomp" not in r.isolation:
        pytest.skip("libseccomp (Debian package libseccomp2) is not installed: no filter")
    # os.unshare is Python 3.12+; chroot is an older way in. Both are refused by the kernel.
    r = attack("import os\nos.chroot('.')", disarm=True)
    assert not r.ok and "Operation not permitted" in last_error(r), r.stderr
    r = attack("import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)", disarm=True)
    assert not r.ok and "Operation not permitted" in last_error(r), r.stderr
    r = attack("import socket\na, b = socket.socketpair()\na.send(b'x')\nprint(b.recv(1))",
               disarm=True)
    assert r.ok and "b'x'" in r.stdout, r.stderr  # AF_UNIX stays
    r = attack("import threading\nt = threading.Thread(target=print, args=('thread',))\n"
               "t.start(); t.join()", disarm=True)
    assert r.ok and "thread" in r.stdout, r.stderr  # clone3 -> ENOSYS -> clone works
