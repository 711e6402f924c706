"""Run folders: claiming one for a new run, writing its config, and checking that a ``--resume`` can continue it.

A run folder holds ``config.yaml`` (the config that ran), ``sessions.jsonl`` (one line per start or resume: the
device ``run.device`` resolved to, threads, torch, host, CPU model and vector extensions), ``metrics.jsonl``,
TensorBoard events and ``checkpoints/{last,best}.pt``. Its claim is an exclusive create of ``config.yaml``, so two
runs started at the same moment never share a folder; a run refused before it starts leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from metaticket.config import Config, config_yaml, load_run_config
from metaticket.distributed import Collective
from metaticket.errors import MetaticketError
from metaticket.hardware import cpu_info
from metaticket.runs.checkpoint import check_checkpoint, load_checkpoint, open_append, write_text_atomic


def last_checkpoint(run_dir: Path) -> Path:
    """``run_dir/checkpoints/last.pt``, or a one-line error when the folder has none to continue."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        raise MetaticketError(f"cannot resume {run_dir}: it has no checkpoints/last.pt; start a new run instead")
    return last


def saved_config(run_dir: Path, writers: str) -> Config:
    """The config.yaml a run folder holds; ``writers`` names the commands that write such folders."""
    if not (run_dir / "config.yaml").is_file():
        raise MetaticketError(f"{run_dir} is not a run folder (no config.yaml); pass {writers} wrote")
    return load_run_config(run_dir / "config.yaml")


def claim_run_dir(run_dir: Path) -> Path:
    """The first of ``run_dir``, ``run_dir-1``, ``run_dir-2``, ... that holds no run, claimed at once.

    The claim is an exclusive create of the folder's (still empty) ``config.yaml``, so two runs started at the same
    moment with the same name get two folders. :func:`release_run_dir` undoes a claim whose run never started.
    """
    n = 0
    races = 0
    while True:
        candidate = run_dir if n == 0 else run_dir.with_name(f"{run_dir.name}-{n}")
        if not (candidate / "checkpoints").exists():
            try:
                candidate.mkdir(parents=True, exist_ok=True)
                os.close(os.open(candidate / "config.yaml", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return candidate
            except FileExistsError:
                pass
            except FileNotFoundError:
                # another process released its claim of this name (removing the folder or an empty parent) between
                # our mkdir and our create: the same name is free again, try it again
                races += 1
                if races < 100:
                    continue
                raise MetaticketError(f"cannot create the run folder {candidate}: it keeps being removed by another "
                                      f"process; try again") from None
            except OSError as e:
                raise MetaticketError(f"cannot create the run folder {candidate} ({e.strerror}); point run.out_dir at "
                                      f"a folder you can write to") from None
        n += 1


def release_run_dir(run_dir: Path, keep: Path) -> None:
    """Undo the claim of a run refused before it started (its ``config.yaml`` still empty): remove the file and the
    folders made for it, up to ``keep`` (the deepest folder that existed before), while they are empty."""
    claim = run_dir / "config.yaml"
    if not claim.is_file() or claim.stat().st_size:
        return
    claim.unlink()
    folder = run_dir
    while folder != keep and folder != folder.parent:
        try:
            folder.rmdir()
        except OSError:  # not empty: something else lives there
            return
        folder = folder.parent


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder_link(run_dir: Path) -> None:
    """A run folder that is a symbolic link is followed only to a folder of the user who runs us: in a shared
    ``out_dir``, someone else's link must not make our run write into their target."""
    if not run_dir.is_symlink():
        return
    target = run_dir.resolve()
    owner = target.stat().st_uid if target.is_dir() else None
    if owner is None or (hasattr(os, "getuid") and owner != os.getuid()):
        raise MetaticketError(f"the run folder {run_dir} is a link to {target}, which is not a folder of yours; "
                              f"remove the link or choose another run.name")


LOCK = ".running"  # held (flock) by the process that trains in a run folder, for as long as it does


def hold_run(run_dir: Path) -> int | None:
    """Lock ``run_dir`` for this process (an exclusive ``flock`` on its ``.running`` file, which names the pid), or
    a one-line error when another process holds it: two ``--resume`` of one run at once would interleave their
    checkpoints and logs. Returns the file descriptor to :func:`release_hold` (None where flock does not exist)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise MetaticketError(f"{run_dir} is in use by a running process (pid {holder}); wait for it to end (or stop "
                              f"it) before resuming it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def release_hold(run_dir: Path, fd: int | None) -> None:
    """Undo :func:`hold_run`: the lock file is removed, then released."""
    if fd is None:
        return
    (run_dir / LOCK).unlink(missing_ok=True)
    os.close(fd)


def run_in_claimed_dir(start: Callable[[Path], object], run_dir: Path, resume: bool, group: Collective) -> Path:
    """Claim the run folder (rank 0, unless resuming), hold it for the run (:func:`hold_run`), call
    ``start(folder)``, and release the claim when the run is refused before it writes its config. Returns the
    folder."""
    keep = _existing_ancestor(run_dir.parent)
    check_folder_link(run_dir)
    if not resume and group.main:
        run_dir = claim_run_dir(run_dir)
    run_dir = Path(group.broadcast(str(run_dir)))  # rank 0 chose the folder
    fd = None
    try:
        if group.main and run_dir.is_dir():
            fd = hold_run(run_dir)
        start(run_dir)
    except BaseException:
        release_hold(run_dir, fd)
        fd = None
        if not resume and group.main:
            release_run_dir(run_dir, keep)
        raise
    finally:
        release_hold(run_dir, fd)
    return run_dir


def create_run_dir(config: Config, run_dir: Path, resume: bool, device: torch.device) -> None:
    """Write ``run_dir``'s config.yaml (rank 0) once data and model are built and a resumed checkpoint fits: a run
    refused before this point leaves no folder, and the note on a diverted folder is printed only for a run that
    starts. Appends this session to ``sessions.jsonl``.

    ``run.device`` stays as written (``auto`` is a rule, so a run resumes on a machine with another device); the
    device it resolved to in each session is the ``device`` of that session's line."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", config_yaml(config))
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resume": resume, "device": str(device),
               "threads": torch.get_num_threads(), "torch": torch.__version__, "host": platform.node(),
               "python": platform.python_version(), "cpu": cpu_info()}  # trained floats differ between CPU kinds
    with open_append(run_dir / "sessions.jsonl") as f:  # a torn last line is cut, a planted link refused
        f.write(json.dumps(session) + "\n")
    wanted = Path(config.run.out_dir) / config.run.name
    if not resume and run_dir.parent == wanted.parent and run_dir.name != wanted.name:
        print(f"{wanted} holds an earlier run; writing this one to {run_dir}", file=sys.stderr)



GROWABLE = ("meta.steps", "train.epochs", "train.max_iterations")  # what a --resume may raise: train longer


def check_resumable(run_dir: Path, config: Config,
                    resolve: Callable[..., Config] = lambda c, saved=None: c) -> tuple[dict, Config]:
    """The checkpoint a ``--resume`` of ``run_dir`` continues and the config it continues with, once the config is
    known to equal the saved one (but for a larger :data:`GROWABLE` value) and the checkpoint to be readable and of
    this kind of run. Writes nothing.

    ``resolve(config, saved)`` fills ``auto``/null values (:func:`metaticket.runs.factory.resolve`): the saved config is
    resolved on its own (folders of older versions saved ``auto``), the new one from the saved values first."""
    saved = run_dir / "config.yaml"
    if not saved.is_file() or not saved.stat().st_size:
        raise MetaticketError(f"cannot resume {run_dir}: it has no config.yaml; start a new run instead")
    old_config = resolve(load_run_config(saved))
    config = resolve(config, old_config)
    old, new = old_config.to_dict(), config.to_dict()
    diff = [(f"{sec}.{k}", old[sec][k], new[sec][k]) for sec in new for k in new[sec] if new[sec][k] != old[sec][k]]
    fixed = [f"{k} (saved {a!r}, now {b!r})" for k, a, b in diff if k not in GROWABLE]
    if fixed:
        raise MetaticketError(f"cannot resume {run_dir}: the config differs from its saved config.yaml in "
                              f"{', '.join(fixed[:4])}{' and more' if len(fixed) > 4 else ''}; resume with the saved "
                              f"values (only {', '.join(GROWABLE)} may grow)")
    for key, a, b in diff:
        if b is not None and (a is None or b < a):  # null max_iterations: no limit
            raise MetaticketError(f"cannot resume {run_dir}: {key} = {b} is below the saved {a}; a resumed run may "
                                  f"train longer, not shorter")
    last = last_checkpoint(run_dir)  # checked before anything is written into the folder
    return check_checkpoint(load_checkpoint(last), config.run.kind, last), config
