"""What the event loop's longest stalls during ingest with snapshots are made of, each stall named by its cause.

`python -m server.bench.stall_trace [--customers N] [--runs 2] [--batches 200] [--snapshot-every-events N]`
starts a Tariff server through this module (`serve`, which installs the tracing below before it runs `tariff
serve` with the stall bench's flags), seeds it, runs ingest as `tariff bench --only stall` does, and attributes
every late wake of the loop over `--report-over-ms` to what overlapped it in the server:

- `late`: the stall sampler's wake (server/loopstall.py), with the loop thread's CPU and its wait for a CPU;
- `gc`: a collection (generation, thread, CPU, objects collected); before a generation 1 or 2 collection, what it
  scans (`gcscan`: tracked objects by type, their referents, which its traversal visits, by type, and the
  containers with the most); after a full collection, what it freed by type (`gcfreed`). These counts run inside
  the collector's callback, on the collecting thread: the stalls they overlap are longer for them;
- `job`: a call handed to a writer thread (Worker.run: rating, journal), or an explain index write, with its
  thread's CPU time over the call: a job whose CPU nearly equals its wall time held the GIL, or competed for it;
- `gil`: a probe thread's wake that waited for the GIL (its lateness less its wait for a CPU) over GIL_PROBE_MS,
  with every thread's CPU time and wait for a CPU over that wait (/proc/self/task/*/schedstat) and where each
  thread's Python stack stands once the GIL is free: the holder is the thread that ran or waited for a CPU;
- `loopwait`: where the kernel has the loop's thread waiting (state, wchan, syscall) when the probe finds the
  stall sampler LOOP_OVERDUE_S past its wake-up (a wait for something other than the GIL);
- `threads`: a process of its own (`sample`, so that it runs while the server's threads wait for the GIL, which the
  probe above cannot: it needs the GIL to look) reads every server thread's state and system call from /proc every
  THREAD_SAMPLE_S. A stall whose samples show the loop's thread waiting on a futex (the GIL) names its holder: the
  thread that ran meanwhile (`gil_holder`, with how many samples saw it running). Every stall says where the loop's
  thread was sampled (`loop_in`: state and system call, "S 232" epoll_wait, "D -1" a page fault waiting in the
  kernel) and which threads were blocked in the kernel meanwhile (`blocked`). A stall whose loop sat in epoll_wait
  with its timer due, or ran, was the machine's.

The server runs on uvloop, whose callbacks cannot be wrapped from Python: the loop's own long callbacks show as
the sampler's `loop_cpu_ms`, not by name.

Policies can be tried before they are made the server's own: TRACE_SWITCH_INTERVAL_S, TRACE_GC_THRESHOLDS.
The records are written as JSON at exit; the summary prints the distribution of stalls and, for the longest, what
overlapped each.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

RECORDS_ENV = "TARIFF_STALL_TRACE"
GIL_PROBE_MS = 1.0
LATE_RECORD_MS = 1.0
# The probe reads where the loop's thread waits when its sampler is this far past its wake-up.
LOOP_OVERDUE_S = 0.002
THREAD_SAMPLE_S = 0.00025
SAMPLES_ENV = "TARIFF_STALL_TRACE_SAMPLES"
SYS_FUTEX = {"x86_64": "202", "aarch64": "98"}
# epoll_wait, epoll_pwait, epoll_pwait2 (aarch64 has only the last two): the sampler keeps only the loop's own
# state while it sleeps in one of these or runs in user space ("running").
SYS_EPOLL = {"x86_64": ("232", "281", "441"), "aarch64": ("22", "441")}


def _now() -> float:
    return time.perf_counter()


def _install_tracing(path: str) -> None:
    """In the server process: the recorders above, written to `path` at exit."""
    import atexit

    records: list[tuple[Any, ...]] = []
    loop_state: dict[str, Any] = {"tid": 0, "due": 0.0}
    _trace_loop_wakes(records, loop_state)
    _trace_collections(records)
    _trace_writer_jobs(records)
    threading.Thread(target=_probe_gil, args=(records, loop_state), name="gil-probe", daemon=True).start()
    names: dict[int, str] = {}  # every thread's name by native id, kept for threads that end before the dump
    threading.Thread(target=_name_threads, args=(names,), name="thread-names", daemon=True).start()
    command = [sys.executable, "-m", "server.bench.stall_trace", "sample", str(os.getpid()), path + ".threads"]
    sampler = subprocess.Popen(command, preexec_fn=_raise_priority)
    atexit.register(_dump_records, path, records, names, sampler)


def _trace_loop_wakes(records: list[tuple[Any, ...]], loop_state: dict[str, Any]) -> None:
    """The stall sampler's late wakes (`late`); `loop_state` tells the GIL probe the loop's thread and next wake."""
    from server import loopstall

    async def traced_sampler(self: loopstall.StallSampler) -> None:
        loop_state["tid"] = threading.get_native_id()
        schedstat = loopstall._open_schedstat()
        interval_s = self.interval_s
        self.reads_runqueue = schedstat is not None
        while True:
            due = _now() + interval_s
            loop_state["due"] = due
            cpu_before = time.thread_time()
            waited_before = loopstall._waited_s(schedstat)
            await asyncio.sleep(interval_s)
            woke = _now()
            late_s = woke - due
            cpu_s = time.thread_time() - cpu_before
            runqueue_s = loopstall._waited_s(schedstat) - waited_before
            if late_s * 1e3 >= LATE_RECORD_MS:
                records.append(("late", due, woke, cpu_s, runqueue_s))
            if late_s > self.longest_s:
                self.longest_s, self.longest_cpu_s, self.longest_runqueue_s = late_s, cpu_s, runqueue_s

    loopstall.StallSampler.run = traced_sampler  # type: ignore[method-assign]


def _trace_collections(records: list[tuple[Any, ...]]) -> None:
    """Every collection (`gc`), what an older generation's scans (`gcscan`) and what a full one frees (`gcfreed`)."""
    gc_started: dict[int, tuple[float, float]] = {}
    scanned: dict[int, dict[int, str]] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        ident = threading.get_ident()
        if phase == "start":
            if info["generation"] >= 1:  # what an older generation's collection scans (rare: worth the count)
                records.append(("gcscan", _now(), _now(), info["generation"], _young_types(info["generation"])))
            if info["generation"] == 2:  # what a full collection will free: the scanned objects by id, then by type
                scanned[ident] = {id(item): type(item).__qualname__ for item in gc.get_objects()}
            gc_started[ident] = (_now(), time.thread_time())
        elif ident in gc_started:
            start, cpu = gc_started.pop(ident)
            name = threading.current_thread().name
            records.append(("gc", start, _now(), time.thread_time() - cpu, info["generation"], info["collected"], name))
            if ident in scanned:
                before = scanned.pop(ident)
                for item in gc.get_objects():
                    before.pop(id(item), None)
                freed: dict[str, int] = {}
                for type_name in before.values():
                    freed[type_name] = freed.get(type_name, 0) + 1
                records.append(("gcfreed", start, _now(), sorted(freed.items(), key=lambda kv: -kv[1])[:15]))

    gc.callbacks.append(on_gc)


def _trace_writer_jobs(records: list[tuple[Any, ...]]) -> None:
    """The writer threads' calls, the explain index's writes and the heap trims after a snapshot (`job`)."""
    from server import explain_index, heap, worker

    worker_run = worker.Worker.run

    def traced_worker_run(self: worker.Worker, function: Any, *args: Any) -> Any:
        name = getattr(function, "__qualname__", repr(function))

        def job(*call_args: Any) -> Any:
            start, cpu = _now(), time.thread_time()
            try:
                return function(*call_args)
            finally:
                records.append(("job", start, _now(), time.thread_time() - cpu, name, threading.current_thread().name))

        return worker_run(self, job, *args)

    worker.Worker.run = traced_worker_run  # type: ignore[method-assign]

    index_write = explain_index.ExplainIndex.write

    def traced_index_write(self: explain_index.ExplainIndex, blobs: list[bytes], through_seq: int) -> None:
        start, cpu = _now(), time.thread_time()
        try:
            index_write(self, blobs, through_seq)
        finally:
            records.append(("job", start, _now(), time.thread_time() - cpu, "ExplainIndex.write", "tariff-explain"))

    explain_index.ExplainIndex.write = traced_index_write  # type: ignore[method-assign,assignment]
    trim_heap = heap.trim_heap

    def traced_trim_heap() -> None:  # after a snapshot: malloc_trim holds the process's mmap lock meanwhile
        start, cpu = _now(), time.thread_time()
        try:
            trim_heap()
        finally:
            records.append(
                ("job", start, _now(), time.thread_time() - cpu, "trim_heap", threading.current_thread().name)
            )

    heap.trim_heap = traced_trim_heap  # the writer and the start call it through the module: traced there too


def _probe_gil(records: list[tuple[Any, ...]], loop_state: dict[str, Any]) -> None:
    """The probe thread: its wakes that waited for the GIL (`gil`), and where the overdue loop waits (`loopwait`)."""
    fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    threads = _ThreadClocks()
    while True:
        waited_before = int(os.pread(fd, 64, 0).split()[1])
        due = _now() + 0.001
        time.sleep(0.001)
        woke = _now()
        runqueue_s = (int(os.pread(fd, 64, 0).split()[1]) - waited_before) / 1e9
        spent = threads.since_last()
        if loop_state["tid"] and _now() - loop_state["due"] > LOOP_OVERDUE_S:
            records.append(("loopwait", _now(), _now(), *_blocked_in(loop_state["tid"])))
        if (woke - due - runqueue_s) * 1e3 >= GIL_PROBE_MS:
            # Who ran or waited for a CPU meanwhile, and where each tariff thread is now: the GIL's holder
            # has just let it go, so its stack is at (or just past) what held it.
            frames = sys._current_frames()
            stacks = {t.name: _stack(frames.get(t.ident or 0)) for t in threading.enumerate()}
            records.append(("gil", due, woke, runqueue_s, spent, stacks))


def _name_threads(names: dict[int, str]) -> None:
    while True:
        names.update({thread.native_id or 0: thread.name for thread in threading.enumerate()})
        time.sleep(0.5)


def _dump_records(
    path: str, records: list[tuple[Any, ...]], names: dict[int, str], sampler: subprocess.Popen[bytes]
) -> None:
    """At exit: the thread sampler's rows join the records, all written to `path` as JSON."""
    sampler.terminate()
    sampler.wait()
    with contextlib.suppress(OSError):
        samples = json.loads(Path(path + ".threads").read_text())
        records.extend(("threads", at, at, row) for at, row in samples)
    names.update({thread.native_id or 0: thread.name for thread in threading.enumerate()})
    dumped = {"switch_interval_s": sys.getswitchinterval(), "gen2_at_exit": _gen2_types()}
    Path(path).write_text(json.dumps(dumped | {"records": records, "loop_tid": os.getpid(), "names": names}))


def _raise_priority() -> None:
    """In the sampler, before it starts: a nice below the server's, where permitted, so that it samples on time."""
    with contextlib.suppress(OSError):
        os.nice(-10)


def sample_threads(pid: int, out: Path) -> None:
    """Until SIGTERM, every THREAD_SAMPLE_S: (time, [(thread id, state, system call or "running")]) for every
    thread while the process's main thread (the event loop) is elsewhere than in epoll_wait or on a CPU (on a
    futex: the GIL; in state D: a page fault or a lock in the kernel), for the loop's thread alone otherwise;
    written to `out` as JSON."""
    stopping = False

    def stop(_signal: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    futex = SYS_FUTEX.get(platform.machine(), "202")
    quiet = (*SYS_EPOLL.get(platform.machine(), ("232", "281", "441")), "running")
    files: dict[int, tuple[int, int]] = {}
    samples: list[tuple[float, list[tuple[int, str, str, str]]]] = []
    listed = 0.0
    while not stopping:
        now = time.perf_counter()
        if now - listed > 0.05:  # threads come and go: listed again every 50 ms
            listed = now
            for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                if tid not in files:
                    with contextlib.suppress(OSError):
                        base = f"/proc/{pid}/task/{tid}/"
                        files[tid] = (os.open(base + "stat", os.O_RDONLY), os.open(base + "syscall", os.O_RDONLY))
        row = []
        for tid, (stat, syscall) in list(files.items()):
            try:
                state = os.pread(stat, 512, 0).rsplit(b")", 1)[1].split()[0].decode()
                fields = os.pread(syscall, 256, 0).split() or [b"?"]
            except (OSError, IndexError):
                del files[tid]
                continue
            call = fields[0].decode()
            # A futex's address tells the GIL (one address, the most waited on) from a lock (a malloc arena's).
            word = fields[1].decode() if call == futex and len(fields) > 1 else ""
            row.append((tid, state, call, word))
        loop = next((entry for entry in row if entry[0] == pid), (pid, "?", "?", ""))
        if loop[2] == futex or loop[1] == "D" or loop[2] not in quiet:
            samples.append((now, row))  # every thread: what the loop waits for, and who runs meanwhile
        else:
            samples.append((now, [loop]))  # the loop in epoll_wait or running: its own state only
        time.sleep(THREAD_SAMPLE_S)
    out.write_text(json.dumps(samples))


def _gil_holder(samples: list[list[Any]], loop_tid: int, names: dict[str, str]) -> dict[str, Any]:
    """Of a stall's thread samples: how many saw the loop on a futex, the threads seen running meanwhile, and
    where the loop was in the others (state and system call: "S 232" is epoll_wait, "D -1" a page fault that
    waits, for the process's memory-map lock for instance), with the other threads blocked in the kernel (D)."""
    futex = SYS_FUTEX.get(platform.machine(), "202")
    running: dict[str, int] = {}
    loop_in: dict[str, int] = {}
    blocked: dict[str, int] = {}
    on_futex = 0
    for sample in samples:
        loop = next((f"{state} {call} {word}".strip() for tid, state, call, word in sample[3] if tid == loop_tid), "?")
        loop_in[loop] = loop_in.get(loop, 0) + 1
        for tid, state, call, _ in sample[3]:
            name = names.get(str(tid), str(tid))
            if tid != loop_tid and state == "D":
                blocked[f"{name} {call}"] = blocked.get(f"{name} {call}", 0) + 1
        if not loop.startswith(f"S {futex} "):
            continue
        on_futex += 1
        for tid, state, call, _ in sample[3]:
            if tid != loop_tid and state == "R" and call == "running":
                name = names.get(str(tid), str(tid))
                running[name] = running.get(name, 0) + 1
    return {
        "loop_on_futex_samples": on_futex,
        "gil_holder": sorted(running.items(), key=lambda kv: -kv[1])[:3],
        "loop_in": sorted(loop_in.items(), key=lambda kv: -kv[1])[:4],
        "blocked": sorted(blocked.items(), key=lambda kv: -kv[1])[:4],
    }


class _ThreadClocks:
    """Each thread's time on a CPU and waiting for one (/proc/self/task/*/schedstat), as deltas between calls."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}
        self._last: dict[int, tuple[int, int]] = {}

    def since_last(self) -> dict[str, tuple[float, float]]:
        names = {t.native_id: t.name for t in threading.enumerate()}
        spent: dict[str, tuple[float, float]] = {}
        for tid in map(int, os.listdir("/proc/self/task")):
            if tid not in self._fds:
                try:
                    self._fds[tid] = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
                except OSError:
                    continue
            try:
                run_ns, wait_ns = map(int, os.pread(self._fds[tid], 64, 0).split()[:2])
            except OSError:
                continue
            last = self._last.get(tid)
            self._last[tid] = (run_ns, wait_ns)
            if last is not None and (run_ns - last[0] or wait_ns - last[1]) > 200_000:
                spent[names.get(tid, str(tid))] = ((run_ns - last[0]) / 1e6, (wait_ns - last[1]) / 1e6)
        return spent


def _young_types(generation: int) -> dict[str, Any]:
    counts: dict[str, int] = {}
    total = 0
    for older in range(generation + 1):
        for item in gc.get_objects(older):
            total += 1
            counts[type(item).__qualname__] = counts.get(type(item).__qualname__, 0) + 1
    # What the collection traverses: each object's referents (its tp_traverse visits), the largest first.
    visits: dict[str, int] = {}
    largest: list[tuple[int, str, str]] = []
    for older in range(generation + 1):
        for item in gc.get_objects(older):
            referents = len(gc.get_referents(item))
            name = type(item).__qualname__
            visits[name] = visits.get(name, 0) + referents
            if referents >= 200:
                largest.append((referents, name, _hint(item)))
    return {
        "tracked": total,
        "types": sorted(counts.items(), key=lambda kv: -kv[1])[:8],
        "visits": sum(visits.values()),
        "visits_by_type": sorted(visits.items(), key=lambda kv: -kv[1])[:10],
        "largest": sorted(largest, reverse=True)[:20],
    }


def _hint(item: Any) -> str:
    """Which container this is: a dict's first keys, a sequence's first element's type, an object's referrers."""
    try:
        if isinstance(item, dict):
            return "keys " + ", ".join(repr(key)[:40] for key in list(item)[:4])
        referrers = [type(r).__qualname__ for r in gc.get_referrers(item)[:4]]
        sequence = isinstance(item, list | tuple | set | frozenset | deque) and len(item) > 0
        first = type(next(iter(item))).__qualname__ if sequence else ""
        return f"first {first}; held by {referrers}"
    except Exception as error:
        return f"? {type(error).__name__}"


def _gen2_types() -> dict[str, Any]:
    """What a full collection scans at exit: the oldest generation's tracked objects (the frozen ones are not), by
    type, the most common first."""
    counts: dict[str, int] = {}
    objects = gc.get_objects(2)
    for item in objects:
        counts[type(item).__qualname__] = counts.get(type(item).__qualname__, 0) + 1
    common = sorted(counts.items(), key=lambda kv: -kv[1])[:15]
    return {"tracked": len(objects), "frozen": gc.get_freeze_count(), "types": common}


def _blocked_in(tid: int) -> tuple[str, str, str]:
    """(state, wchan, syscall) of a thread: where the kernel has it waiting (the syscall's number first)."""
    texts = []
    for name in ("stat", "wchan", "syscall"):
        try:
            with open(f"/proc/self/task/{tid}/{name}") as file:
                texts.append(file.read().strip())
        except OSError as e:
            texts.append(f"? {e.strerror}")
    state = texts[0].rsplit(")", 1)[-1].split()[0] if ")" in texts[0] else "?"
    return state, texts[1], texts[2].split()[0] if texts[2] else ""


def _stack(frame: Any) -> str:
    parts: list[str] = []
    while frame is not None and len(parts) < 4:
        parts.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return " < ".join(parts)


def serve(argv: list[str]) -> None:
    """`tariff serve` with the tracing installed (the records' path in RECORDS_ENV)."""
    from server.cli import main

    _install_tracing(os.environ[RECORDS_ENV])
    if os.environ.get("TRACE_SWITCH_INTERVAL_S"):  # a policy tried before it is made the server's own
        sys.setswitchinterval(float(os.environ["TRACE_SWITCH_INTERVAL_S"]))
    if os.environ.get("TRACE_GC_THRESHOLDS"):  # "2000,10,10": read by tune_garbage_collector after recovery
        from server import app

        first, second, third = (int(part) for part in os.environ["TRACE_GC_THRESHOLDS"].split(","))
        app.GC_THRESHOLDS = (first, second, third)
    main(["serve", *argv])


def _overlapping(records: list[list[Any]], start: float, end: float) -> list[list[Any]]:
    return [
        r
        for r in records
        if r[0] not in ("late", "loopwait", "gcscan", "gcfreed", "threads") and r[1] < end and r[2] > start
    ]


def _describe_record(record: list[Any], stall_start: float) -> str:
    kind, start, end = record[0], record[1], record[2]
    span = f"{(start - stall_start) * 1e3:+7.2f} ms, {(end - start) * 1e3:6.2f} ms"
    if kind == "gc":
        return f"gc gen {record[4]} on {record[6]}: {span}, cpu {record[3] * 1e3:.2f} ms, {record[5]} collected"
    if kind == "job":
        return f"job {record[4]} on {record[5]}: {span}, cpu {record[3] * 1e3:.2f} ms"
    spent = ", ".join(f"{name} cpu {cpu:.1f} rq {rq:.1f}" for name, (cpu, rq) in record[4].items())
    busy = [name for name in record[4] if name.startswith("tariff")]
    stacks = "; ".join(f"{name} at {record[5].get(name, '?')}" for name in busy)
    return f"gil wait of the probe: {span}, runqueue {record[3] * 1e3:.2f} ms; threads (ms): {spent}; {stacks}"


def _asleep_ms(late: list[Any]) -> float:
    """Of a late wake, the time the loop's thread neither ran nor waited for a CPU: waiting for the GIL or a lock."""
    return float(max(0.0, (late[2] - late[1]) - late[3] - late[4]) * 1e3)


def _distribution(values_ms: list[float]) -> dict[str, int]:
    return {f">= {b} ms": sum(1 for v in values_ms if v >= b) for b in (1, 2, 3, 4, 5, 7, 10, 20)}


def summarize(
    records: list[list[Any]], over_ms: float, top: int, loop_tid: int = 0, names: dict[str, str] | None = None
) -> dict[str, Any]:
    """The stall distribution (whole lateness, and its asleep part: GIL or lock), and for the `top` stalls with
    the longest asleep part what overlapped each (the runqueue part is the machine's load, not the server's) and
    which thread held the GIL; and every stall over `over_ms` counted by the thread that held the GIL meanwhile
    (`gil_stalls`: "-" when the loop was not seen waiting on a futex: not a wait for the GIL)."""
    names = names or {}
    threads = [r for r in records if r[0] == "threads"]
    lates = [r for r in records if r[0] == "late"]
    late_ms = [(r[2] - r[1]) * 1e3 for r in lates]
    collections: dict[str, int] = {}
    for r in records:
        if r[0] == "gc" and (r[2] - r[1]) * 1e3 >= 1:
            key = f"gen {r[4]} >= 1 ms"
            collections[key] = collections.get(key, 0) + 1
    explained = []
    for r in sorted(lates, key=_asleep_ms, reverse=True)[:top]:
        if _asleep_ms(r) < over_ms:
            break
        waits = sorted(
            {f"{w[3]} {w[4]} syscall {w[5]}" for w in records if w[0] == "loopwait" and r[1] <= w[1] <= r[2]}
        )
        explained.append(
            {
                "loop_waits_in": waits,
                "stall_ms": round((r[2] - r[1]) * 1e3, 2),
                "asleep_ms": round(_asleep_ms(r), 2),
                "loop_cpu_ms": round(r[3] * 1e3, 2),
                "loop_runqueue_ms": round(r[4] * 1e3, 2),
                "overlapping": [_describe_record(o, r[1]) for o in _overlapping(records, r[1], r[2])],
            }
            | _gil_holder(_within(threads, r), loop_tid, names)
        )
    return {
        "late_wakes": _distribution(late_ms),
        "asleep_part": _distribution([_asleep_ms(r) for r in lates]),
        "max_ms": round(max(late_ms, default=0.0), 2),
        "max_asleep_ms": round(max((_asleep_ms(r) for r in lates), default=0.0), 2),
        "gc": collections,
        "gil_stalls": _gil_stalls([r for r in lates if (r[2] - r[1]) * 1e3 >= over_ms], threads, loop_tid, names),
        "longest_asleep": explained,
    }


def _within(records: list[list[Any]], late: list[Any]) -> list[list[Any]]:
    """Of records in time order (the thread samples), those within the late wake."""
    start = bisect.bisect_left(records, late[1], key=lambda r: r[1])
    end = bisect.bisect_right(records, late[2], key=lambda r: r[1])
    return records[start:end]


def _gil_stalls(
    lates: list[list[Any]], threads: list[list[Any]], loop_tid: int, names: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Stalls by the thread seen running most while the loop waited on a futex (at least 2 samples): count, worst."""
    by_holder: dict[str, dict[str, float]] = {}
    for late in lates:
        found = _gil_holder(_within(threads, late), loop_tid, names)
        holder = found["gil_holder"][0][0] if found["loop_on_futex_samples"] >= 2 and found["gil_holder"] else "-"
        entry = by_holder.setdefault(holder, {"stalls": 0, "worst_ms": 0.0})
        entry["stalls"] += 1
        entry["worst_ms"] = max(entry["worst_ms"], round((late[2] - late[1]) * 1e3, 2))
    return dict(sorted(by_holder.items(), key=lambda kv: -kv[1]["stalls"]))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--batches", type=int, default=200, help="1,000-event batches per ingest run")
    parser.add_argument("--snapshot-every-events", type=int, default=50_000)
    parser.add_argument("--report-over-ms", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--serve-arg", action="append", default=[], help="an extra `tariff serve` argument")
    parser.add_argument("--keep", type=Path, help="copy the raw records (JSON) here")
    return parser.parse_args()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "sample":
        sample_threads(int(sys.argv[2]), Path(sys.argv[3]))
        return
    from server.bench.seed import seed
    from server.bench.stalls import ACTIVITY_EVERY_S, NEVER, STALL_SAMPLE_MS
    from server.bench.target import BENCH_MAP_SIZE_MB, ServedProcess
    from server.bench.workloads import Bench, BenchConfig

    args = _arguments()
    work = Path(tempfile.mkdtemp(prefix="stall-trace-"))
    config = BenchConfig.for_trace(work, args.runs, args.customers, args.batches)
    bench = Bench(config)
    records_path = work / "records.json"
    os.environ[RECORDS_ENV] = str(records_path)
    flags = [
        "--loop-stall-sample-ms", str(STALL_SAMPLE_MS), "--log-activity-every-s", str(ACTIVITY_EVERY_S),
        "--snapshot-every-events", str(args.snapshot_every_events), "--snapshot-every", NEVER, "--snapshot-journal-factor", "0",
    ]  # fmt: skip
    command = [sys.executable, "-m", "server.bench.stall_trace", "serve", "--data-dir", str(work / "data")]
    server = ServedProcess(
        [*command, "--map-size-mb", str(BENCH_MAP_SIZE_MB), *flags, *args.serve_arg], work / "server.log"
    )
    bench.servers.append(server)
    try:
        server.start()
        seed(server.target, args.customers)
        ingest_from = time.perf_counter()  # the same clock as the server's records (CLOCK_MONOTONIC)
        for _ in range(args.runs):
            bench.ingest(server, args.batches)
        server.stop()
        dumped = json.loads(records_path.read_text())
        during = [r for r in dumped["records"] if r[1] >= ingest_from]
        if args.keep is not None:
            args.keep.write_text(
                json.dumps({"records": during, "loop_tid": dumped["loop_tid"], "names": dumped["names"]})
            )
        result = {
            "loadavg": os.getloadavg(),
            "switch_interval_s": dumped["switch_interval_s"],
            "gen2_at_exit": dumped["gen2_at_exit"],
        }
        summary = summarize(during, args.report_over_ms, args.top, dumped["loop_tid"], dumped["names"])
        print(json.dumps(result | summary, indent=1))
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
