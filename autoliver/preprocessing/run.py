"""Preprocessing a whole dataset: parallel, memory-bounded, resumable (the edge around pipeline.py).

For each data identifier of the requested configurations, every training case that is not
already complete (same preprocessing settings, see ``preprocessing_hash``) is read, preprocessed
and stored in ``{preprocessed}/{dataset}/{data_identifier}/``:

- Workers are processes started with ``spawn`` (no inherited state or locks), each holding one case
  at a time and replaced after a few cases; their number is capped so that the largest cases fit
  the memory that is free (``MemAvailable`` and the cgroup limit, whichever is smaller).
- A case is complete only once its properties file exists: arrays are written under temporary
  names and renamed, the properties last. A run killed at any point (even with SIGKILL; workers
  die with their parent) resumes with the missing cases only; temporaries of dead writers are
  removed. A lock file keeps two runs from writing the same folder.
- A case that fails (unreadable file, wrong label values, …) is reported with its reason while
  the others complete. A worker killed by the system (out of memory) costs no other case: the
  unfinished cases are retried one at a time, and only a case whose worker dies again fails.
- The cases of every data identifier share one pool of workers and one progress bar (a tick per
  case); each output folder gets a log file ``preprocess.log``; the summary gives counts per data
  identifier and the wall time per case of the whole run.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from autoliver import progress
from autoliver.datasets.dataset import DatasetInfo
from autoliver.errors import UserError
from autoliver.planning.plan import Plan
from autoliver.preprocessing import storage

LOG_NAME = "preprocess.log"
LOCK_NAME = ".preprocess.lock"
MAX_CASES_PER_WORKER = 8  # a fresh worker now and then returns any memory the allocator kept
MEMORY_HEADROOM = 0.85  # share of the free memory that workers may plan to use
WORKER_BASE_BYTES = 400 * 2**20  # interpreter and torch in one worker
WORKER_DIED = ("the worker process died while preprocessing this case (killed by the system, most likely out "
               "of memory); free memory or use fewer workers (-np 1), then run again")


@dataclass
class CaseOutcome:
    case: str
    ok: bool
    folder: str = ""  # which data identifier's folder the case was for
    seconds: float = 0.0
    message: str = ""  # one line for the user when it failed, or the input checks' warnings when it did not
    detail: str = ""  # traceback for the log (unexpected errors only)
    shape_zyx: tuple = ()


@dataclass
class Summary:
    """What one data identifier's run did."""

    data_identifier: str
    configurations: list[str]
    folder: Path
    done: list[CaseOutcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[CaseOutcome] = field(default_factory=list)
    wall_seconds: float = 0.0  # of the whole run (all data identifiers share its workers)
    workers: int = 0

    def line(self) -> str:
        n = len(self.done)
        mean = f"; {sum(o.seconds for o in self.done) / n:.2f} s per case in a worker" if n else ""
        return (f"{self.data_identifier} ({', '.join(self.configurations)}): {n} preprocessed, "
                f"{len(self.skipped)} already complete, {len(self.failed)} failed{mean}")


@dataclass(frozen=True)
class _Task:
    case: str
    image_files: tuple[str, ...]
    label_file: str | None
    folder: str
    plan: Plan
    configuration: str
    threads: int


# ----------------------------------------------------------------------------------------------
# The worker side
# ----------------------------------------------------------------------------------------------

def _init_worker(threads: int) -> None:
    # Threads must be set before torch is imported; one thread pool per worker, no oversubscription.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "AUTOLIVER_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Die with the parent: a run killed with SIGKILL must not leave workers writing behind it.
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() == 1:  # the parent is already gone
                os._exit(1)
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent reports, workers just stop
    # Import the heavy modules now, so that a case's time is its own.
    import torch  # noqa: F401

    import autoliver.preprocessing.pipeline  # noqa: F401

    # Leave without the interpreter's teardown (torch's alone takes seconds and the parent waits
    # for it). Safe: results go back synchronously and every file is closed when a task returns.
    import atexit

    atexit.register(_exit_now)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run_task(task: _Task) -> CaseOutcome:
    """Preprocess and store one case; never raises (the outcome says what happened)."""
    t0 = time.perf_counter()

    def outcome(ok: bool, message: str = "", detail: str = "", shape=()) -> CaseOutcome:
        return CaseOutcome(task.case, ok, task.folder, time.perf_counter() - t0, message, detail, shape)

    try:
        import torch

        from autoliver.io.checks import check_image
        from autoliver.io.images import read_image
        from autoliver.preprocessing.pipeline import preprocess_case

        torch.set_num_threads(task.threads)
        config = task.plan.configuration(task.configuration)
        # training data: NaN/Inf, impossible voxel sizes and orientations are errors (autoliver.io.checks)
        checked = [check_image(read_image(f), modality=task.plan.modality, training=True) for f in task.image_files]
        images = [c.image for c in checked]
        warns = " ".join(w for c in checked for w in c.warnings)
        seg = read_image(task.label_file).array if task.label_file else None
        data, seg_out, props = preprocess_case(images, task.plan, config, seg, case=task.case)
        del images, seg
        storage.write_case(task.folder, task.case, data, seg_out, props, nthreads=task.threads)
        return outcome(True, warns, shape=tuple(data.shape[1:]))
    except UserError as e:
        return outcome(False, str(e).replace("\n", " "))
    except MemoryError:
        return outcome(False, "ran out of memory; re-run with fewer workers (-np 1) or on a machine with more memory")
    except Exception as e:  # noqa: BLE001 - any failure of one case must not stop the others
        return outcome(False, f"{type(e).__name__}: {e}", traceback.format_exc())


# ----------------------------------------------------------------------------------------------
# Memory: how many cases fit at once
# ----------------------------------------------------------------------------------------------

_ITEMSIZE = {"8-bit": 1, "16-bit": 2, "32-bit": 4, "64-bit": 8}


def _header(path: str) -> tuple[int, int, tuple[float, float, float]]:
    """(voxels, bytes per voxel, spacing z,y,x) from the file header only; zeros when unreadable."""
    import SimpleITK as sitk

    try:
        r = sitk.ImageFileReader()
        r.SetFileName(path)
        r.ReadImageInformation()
        size = r.GetSize()
        voxels = 1
        for s in size:
            voxels *= int(s)
        name = sitk.GetPixelIDValueAsString(r.GetPixelID())
        itemsize = next((v for k, v in _ITEMSIZE.items() if k in name), 4)
        spacing = tuple(reversed(r.GetSpacing()[:3])) if len(size) >= 3 else (1.0, 1.0, 1.0)
        return voxels, itemsize * max(1, r.GetNumberOfComponents()), spacing
    except Exception:  # noqa: BLE001 - an unreadable file fails later, with its own message
        return 0, 0, (1.0, 1.0, 1.0)


def estimate_case_bytes(voxels_in: int, itemsize: int, channels: int, zoom: float, denoise: bool = False) -> int:
    """Peak memory of one worker for one case (bytes), from the pipeline's own arrays.

    Always held: the raw channels and the label map. Then the larger of two phases: reading (one
    more copy of a channel) or computing (one float32 intermediate of the resampler, the float32
    output, the resampled labels with a mask of one class, and the body/liver masks or denoised
    channels). Plus chunk buffers and the worker itself. (512 x 512 x 900 int16 to LiTS spacing:
    3.1 GB estimated, 1.9 GB measured.)
    """
    voxels_out = int(voxels_in * zoom)
    held = voxels_in * itemsize * channels + voxels_in
    reading = voxels_in * itemsize
    computing = (max(voxels_in, voxels_out) * 4 + voxels_out * 4 * channels + voxels_out * 2
                 + (voxels_in * 4 * channels if denoise else voxels_in))
    return int(held + max(reading, computing) + 256 * 2**20 + WORKER_BASE_BYTES)


def available_memory_bytes() -> int:
    """Memory this process tree may still use: MemAvailable, bounded by a cgroup limit if any."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 8 * 2**30
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                avail = min(avail, int(limit) - int(Path(usage_file).read_text().strip()))
            break
        except (OSError, ValueError):
            continue
    return max(avail, 0)


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

class _Log:
    def __init__(self, path: Path):
        self.path = path

    def write(self, message: str) -> None:
        stamp = datetime.now().isoformat(timespec="seconds")
        with open(self.path, "a") as f:
            for line in message.splitlines() or [""]:
                f.write(f"{stamp} {line}\n")


class _FolderLock:
    """An exclusive lock on an output folder; released by the system even if the run is killed."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not on POSIX: no protection, still correct for a single run
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise UserError(f"{self.path.parent}: another preprocessing run is writing to this folder. "
                            "Wait for it to finish (or stop it), then run again.") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock


def _is_current(folder: Path, case: str, digest: str) -> bool:
    """Complete and made with the current settings (the digest is looked up without parsing)."""
    if not storage.is_complete(folder, case):
        return False
    try:
        text = storage.case_files(folder, case)[2].read_bytes()
    except OSError:
        return False
    return f'"preprocessing_hash":"{digest}"'.encode() in text


def _plan_workers(tasks: list[_Task], info: DatasetInfo, plan: Plan,
                  requested: int) -> tuple[list[_Task], int, int, str]:
    """Largest cases first; the number of workers that fits in memory; why it was capped."""
    from autoliver.preprocessing.pipeline import effective_configuration, target_spacing

    sizes, headers = {}, {}
    for t in tasks:
        cfg = effective_configuration(plan, plan.configuration(t.configuration))
        if t.case not in headers:
            headers[t.case] = _header(t.image_files[0])
        voxels, itemsize, spacing = headers[t.case]
        new = target_spacing(cfg, spacing)
        zoom = 1.0
        for s, n in zip(spacing, new):
            zoom *= s / n
        channels = len(t.image_files) if len(t.image_files) > 1 else max(1, info.num_phases)
        if len(t.image_files) == 1 and info.phases_in_file:
            voxels //= max(1, info.phases_in_file)
        sizes[t.folder, t.case] = estimate_case_bytes(voxels, itemsize or 2, channels, zoom, cfg.denoise.enabled)
    tasks = sorted(tasks, key=lambda t: -sizes[t.folder, t.case])
    largest = max(sizes.values()) if sizes else 0
    workers = max(1, min(requested, len(tasks)))
    note = ""
    if largest:
        avail = available_memory_bytes()
        fits = max(1, int(avail * MEMORY_HEADROOM // largest))
        if fits < workers:
            note = (f"using {fits} worker{'s' if fits != 1 else ''} instead of {workers}: the largest case needs "
                    f"about {largest / 2**30:.1f} GB and {avail / 2**30:.1f} GB is free")
            workers = fits
        if largest > avail:
            note += ("; " if note else "") + (f"warning: the largest case may need {largest / 2**30:.1f} GB but "
                                               f"only {avail / 2**30:.1f} GB is free")
    threads = max(1, cpu_count() // workers)
    tasks = [_Task(t.case, t.image_files, t.label_file, t.folder, t.plan, t.configuration, threads) for t in tasks]
    return tasks, workers, threads, note


def _run_in_pool(tasks: list[_Task], workers: int, on_done) -> list[_Task]:
    """Run tasks in spawn pools; returns the tasks left unfinished if a pool broke.

    A fresh pool every ``workers × MAX_CASES_PER_WORKER`` cases returns the memory long-lived
    workers keep. Not ``max_tasks_per_child``: with a backlog of queued cases, CPython 3.11–3.14
    stops replacing retired workers and the pool hangs for good (CPython issue 115634).
    """
    ctx = multiprocessing.get_context("spawn")
    finished: set[tuple[str, str]] = set()
    round_size = workers * MAX_CASES_PER_WORKER
    for first in range(0, len(tasks), round_size):
        ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(tasks[0].threads,))
        broken = False
        try:
            futures = {ex.submit(_run_task, t): t for t in tasks[first:first + round_size]}
            for fut in as_completed(futures):
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    broken = True
                    break
                finished.add((outcome.folder, outcome.case))
                on_done(outcome)
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise
        ex.shutdown(wait=True, cancel_futures=True)
        if broken:
            break
    return [t for t in tasks if (t.folder, t.case) not in finished]


def _run_one_at_a_time(tasks: list[_Task], on_done) -> None:
    """After a worker died: the remaining cases one at a time in a single worker, so that a death
    names its case exactly; that case fails, a fresh worker takes the next one."""
    ctx = multiprocessing.get_context("spawn")
    pending = list(tasks)
    while pending:
        ex = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_init_worker,
                                 initargs=(pending[0].threads,))
        try:
            while pending:
                task = pending.pop(0)
                try:
                    outcome = ex.submit(_run_task, task).result()
                except BrokenProcessPool:
                    on_done(CaseOutcome(task.case, False, task.folder, 0.0, WORKER_DIED))
                    break
                on_done(outcome)
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise
        ex.shutdown(wait=True)


def preprocess_dataset(info: DatasetInfo, plan: Plan, preprocessed_dir: str | os.PathLike,
                       configurations: list[str] | None = None, num_processes: int = 2, overwrite: bool = False,
                       cases: list[str] | None = None) -> list[Summary]:
    """Preprocess the training cases of ``info`` for ``configurations`` (default: all in the plan).

    Returns one :class:`Summary` per data identifier; failed cases are listed there (the function
    itself raises only for problems that stop everything: bad arguments, a locked folder).
    """
    from autoliver.preprocessing.pipeline import effective_configuration

    if num_processes < 1:
        raise UserError(f"-np: must be at least 1, got {num_processes}.")
    names = list(configurations) if configurations else list(plan.configurations)
    groups: dict[str, list[str]] = {}
    for name in names:
        cfg = plan.configuration(name)
        effective_configuration(plan, cfg)  # raises if sharing configurations disagree
        groups.setdefault(cfg.data_identifier, []).append(cfg.name)
    all_cases = info.training_cases()
    if cases is not None:
        unknown = sorted(set(cases) - set(all_cases))
        if unknown:
            raise UserError(f"cases: {unknown} are not training cases of {info.name} (no label file in labelsTr).")
        all_cases = [c for c in all_cases if c in set(cases)]
    if not all_cases:
        raise UserError(f"{info.labels_dir}: no training cases (no {info.file_ending} label files). "
                        "Check the dataset with verify_dataset.")

    folders = {ident: Path(preprocessed_dir) / info.name / ident for ident in groups}
    summaries = {ident: Summary(ident, names, folders[ident]) for ident, names in groups.items()}
    logs = {str(folders[ident]): _Log(folders[ident] / LOG_NAME) for ident in groups}
    by_folder = {str(folders[ident]): summaries[ident] for ident in groups}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as locks:
        todo = []
        for ident, names in groups.items():
            folders[ident].mkdir(parents=True, exist_ok=True)
            locks.enter_context(_FolderLock(folders[ident]))
            todo += _cases_to_do(info, plan, summaries[ident], all_cases, overwrite, logs[str(folders[ident])])
        if todo:
            _run(info, plan, todo, num_processes, by_folder, logs)
        wall = time.perf_counter() - t0
        for s in summaries.values():
            s.wall_seconds = wall
            logs[str(s.folder)].write(s.line())
            logs[str(s.folder)].write(overall_line(list(summaries.values())))
    return list(summaries.values())


def _cases_to_do(info: DatasetInfo, plan: Plan, summary: Summary, cases: list[str], overwrite: bool,
                 log: _Log) -> list[_Task]:
    from autoliver.preprocessing.pipeline import preprocessing_hash

    folder, config = summary.folder, summary.configurations[0]
    removed = storage.remove_stale_temporaries(folder)
    digest = preprocessing_hash(plan, plan.configuration(config))
    todo, stale = [], 0
    for case in cases:
        if not overwrite and _is_current(folder, case, digest):
            summary.skipped.append(case)
            continue
        if not overwrite and storage.is_complete(folder, case):
            stale += 1
        todo.append(_Task(case, tuple(str(p) for p in info.image_files(case)), str(info.label_file(case)),
                          str(folder), plan, config, 1))
    log.write(f"start: dataset {info.name}, data {summary.data_identifier} for {', '.join(summary.configurations)}, "
              f"settings {digest}; {len(cases)} cases: {len(todo)} to do ({stale} made with other settings), "
              f"{len(summary.skipped)} already complete"
              + (f"; removed {len(removed)} stale temporary files" if removed else ""))
    return todo


def _run(info: DatasetInfo, plan: Plan, todo: list[_Task], num_processes: int, by_folder: dict[str, Summary],
         logs: dict[str, _Log]) -> None:
    """All cases of all data identifiers through one pool of workers."""
    todo, workers, threads, note = _plan_workers(todo, info, plan, num_processes)
    for s in by_folder.values():
        s.workers = workers
    if note:
        progress.say(f"preprocess: {note}")
    for log in logs.values():
        if note:
            log.write(note)
        log.write(f"{workers} worker(s) x {threads} thread(s), largest cases first")
    bar = progress.bar(total=len(todo), desc="preprocess", unit="case")

    def on_done(o: CaseOutcome) -> None:
        summary, log = by_folder[o.folder], logs[o.folder]
        if o.ok:
            summary.done.append(o)
            log.write(f"ok {o.case}: {o.seconds:.2f} s, shape {list(o.shape_zyx)}")
            if o.message:
                log.write(f"warning {o.case}: {o.message}")
                bar.write(f"preprocess: warning: {o.message}", file=sys.stderr)
        else:
            summary.failed.append(o)
            log.write(f"FAILED {o.case}: {o.message}" + (f"\n{o.detail}" if o.detail else ""))
            bar.write(f"preprocess: {summary.data_identifier}/{o.case} failed: {o.message}", file=sys.stderr)
        bar.set_postfix_str(f"{summary.data_identifier}/{o.case}", refresh=False)
        bar.update(1)

    try:
        if workers == 1 and num_processes == 1:
            _init_threads_here(threads)
            for t in todo:
                on_done(_run_task(t))
        else:
            left = _run_in_pool(todo, workers, on_done)
            if left:
                for log in logs.values():
                    log.write(f"a worker process died; running the {len(left)} unfinished cases one at a time")
                _run_one_at_a_time(left, on_done)
    except KeyboardInterrupt:
        for log in logs.values():
            log.write("interrupted; complete cases are kept, re-run to finish")
        raise
    finally:
        bar.close()


def overall_line(summaries: list[Summary]) -> str:
    """One line for the whole run: cases, wall time and time per case."""
    done = sum(len(s.done) for s in summaries)
    wall = max((s.wall_seconds for s in summaries), default=0.0)
    workers = max((s.workers for s in summaries), default=0)
    per_case = f", {wall / done:.2f} s per case" if done else ""
    return (f"{done} case(s) preprocessed, {sum(len(s.skipped) for s in summaries)} already complete, "
            f"{sum(len(s.failed) for s in summaries)} failed in {wall:.1f} s{per_case}"
            + (f" with {workers} worker{'s' if workers != 1 else ''}" if workers else ""))


def _init_threads_here(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
