"""Starts and stops the control plane's processes without leaving strays.

Each process runs in its own process group, so stopping it signals everything it may have spawned. Attached
processes also get ``PR_SET_PDEATHSIG`` on Linux, so they die with the Python process even when it is killed
abruptly; detached ones (``kaizen dev cluster up``) outlive it and are found again through a state file, which is
why a :class:`ManagedProcess` records its start time: a recorded PID that the kernel has since reused for another
process is never signalled.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_PROC = Path("/proc")
# Process states (the first field of /proc/<pid>/stat after the name) of a process that has exited.
_EXITED = ("Z", "X")


@dataclasses.dataclass
class ManagedProcess:
    """One started process: its name in the cluster, identity and log file."""

    name: str
    pid: int
    pgid: int
    start_time: int | None
    log: Path
    popen: subprocess.Popen[bytes] | None = dataclasses.field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "pgid": self.pgid, "start_time": self.start_time,
                "log": str(self.log)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManagedProcess:
        return cls(data["name"], data["pid"], data["pgid"], data["start_time"], Path(data["log"]))

    def alive(self) -> bool:
        """Whether the recorded process still runs (a zombie or a reused PID does not count)."""
        if self.popen is not None:
            return self.popen.poll() is None
        return process_alive(self.pid) and (self.start_time is None or _start_time(self.pid) == self.start_time)

    def exit_code(self) -> int | None:
        """The exit status, when this Python process started it and it has exited."""
        return None if self.popen is None else self.popen.poll()

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the process's log, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None if there is no such process."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return None if fields is None else int(fields[19])


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process; a zombie (exited, not yet reaped) is not running."""
    if not _PROC.is_dir():
        return _signalable(os.kill, pid)
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in _EXITED


def group_alive(pgid: int) -> bool:
    """Whether any running process is left in the process group ``pgid``."""
    if not _PROC.is_dir():
        return _signalable(os.killpg, pgid)
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[0] not in _EXITED and int(fields[2]) == pgid:
                return True
    return False


def _signalable(kill: Callable[[int, int], None], target: int) -> bool:
    """Without /proc (not Linux), whether ``target`` can be signalled; a zombie counts as running here."""
    try:
        kill(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # It exists, and belongs to someone else.
    return True


def _die_with_parent(parent: int, prctl: Callable[..., int]) -> Callable[[], None]:
    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died between fork and prctl, in which case the signal will never come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def spawn(name: str, argv: Sequence[str | Path], log: Path, *, detach: bool, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> ManagedProcess:
    """Starts ``argv`` in a new process group with stdout and stderr appended to ``log`` (``env`` and ``cwd``:
    its environment and working directory, by default this process's).

    ``detach=False`` ties the process to this one: on Linux it dies when the calling *thread* ends (the kernel's
    rule for ``PR_SET_PDEATHSIG``), so spawn from a thread that lives as long as the process should, such as the
    main thread. ``detach=True`` starts a new session so that it outlives this process and the terminal.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    preexec = None
    if not detach and sys.platform == "linux":
        # Resolved before the fork: the child of a threaded process must not load libraries.
        preexec = _die_with_parent(os.getpid(), ctypes.CDLL(None, use_errno=True).prctl)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
            process_group=None if detach else 0,
            preexec_fn=preexec,
            env=env,
            cwd=cwd,
        )
    return ManagedProcess(name, popen.pid, popen.pid, _start_time(popen.pid), log, popen)


def stop(processes: Sequence[ManagedProcess], grace: float = 10.0) -> None:
    """Stops the processes' groups in reverse order: SIGTERM, then SIGKILL after ``grace`` seconds.

    Reverse start order stops clients before the servers they use; a server stopped first waits for its clients
    (etcd holds the API server's watches open for seconds, the API server retries etcd for longer). Returns once no
    process of any group is running.
    """
    for p in reversed(processes):
        if not p.alive():
            continue
        _signal_group(p.pgid, signal.SIGTERM)
        if not _wait_gone(p, time.monotonic() + grace):
            _signal_group(p.pgid, signal.SIGKILL)
            if not _wait_gone(p, time.monotonic() + 10):
                raise RuntimeError(f"{p.name} (process group {p.pgid}) survived SIGKILL")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(process: ManagedProcess, deadline: float) -> bool:
    while True:
        if process.popen is not None:
            process.popen.poll()  # Reaps the group leader, so that it stops counting as a group member.
        if not group_alive(process.pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
