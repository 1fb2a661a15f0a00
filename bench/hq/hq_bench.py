"""HyperQueue side of `hodei-bench compare`.

Runs the same workloads as the Hodei side on a real HyperQueue (the `hyperqueue` wheel,
version 0.27.0): `LocalCluster` starts an HQ server and workers as threads of this process.
The HQ server listens on 0.0.0.0, so before anything else this process moves into a private
network namespace (and UTS namespace, hostname `localhost`) whose only interface is `lo`.

HQ's Python API has no job-status call, and `Client.wait_for_jobs` sleeps 1 s between
queries. Its FFI `wait_for_jobs` asks the server for the jobs' counters, then calls back
with them, and only then sleeps; a callback that raises when the jobs are not complete turns
it into one status query. That is how this driver polls, every few milliseconds.

The result (timings as raw numbers, no statistics) goes to `--out` as one JSON object; HQ
itself prints a table to stdout. Exit codes: 0 ok, 3 HQ cannot run here (message on
stderr), 4 deadline passed, 5 a task failed or HQ misbehaved.
"""

import argparse
import ctypes
import fcntl
import json
import os
import socket
import struct
import sys
import tempfile
import time

CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

EXIT_CANNOT_RUN = 3
EXIT_DEADLINE = 4
EXIT_FAILED = 5


class Fail(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def private_network():
    """Moves this process into new network and UTS namespaces with only `lo`, up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET | CLONE_NEWUTS) != 0:
        err = ctypes.get_errno()
        raise Fail(
            EXIT_CANNOT_RUN,
            f"unshare(CLONE_NEWNET|CLONE_NEWUTS) failed: {os.strerror(err)}; the HyperQueue "
            "server binds 0.0.0.0, so it only runs in a private network namespace "
            "(needs root or CAP_SYS_ADMIN)",
        )
    # HQ workers and clients reach the server by hostname.
    socket.sethostname("localhost")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"] or not flags & IFF_UP:
        raise Fail(EXIT_CANNOT_RUN, f"the private namespace is not loopback-only: {names}")
    return names


def import_hq():
    try:
        import hyperqueue  # noqa: F401
        from hyperqueue import Job
        from hyperqueue.cluster import LocalCluster, WorkerConfig
        from hyperqueue.ffi import get_version
    except ImportError as e:
        raise Fail(
            EXIT_CANNOT_RUN,
            f"cannot import hyperqueue with {sys.executable} ({e}); "
            "run `pip install hyperqueue==0.27.0` or pass --python",
        ) from e
    return Job, LocalCluster, WorkerConfig, get_version()


class NotDone(Exception):
    pass


class Poller:
    """One HQ job-status query per call (see the module doc)."""

    def __init__(self, client):
        self.conn = client.connection

    def status(self, job_id):
        seen = {}

        def callback(statuses):
            seen.update(statuses)
            if not all(s["completed"] for s in statuses.values()):
                raise NotDone()

        try:
            self.conn.wait_for_jobs([job_id], callback)
        except NotDone:
            pass
        st = seen.get(job_id)
        if st is None:
            raise Fail(EXIT_FAILED, f"HQ returned no status for job {job_id}")
        return st

    def wait(self, job_id, poll_s, deadline, what):
        """Polls until the job is complete; returns (status, polls)."""
        polls = 0
        while True:
            st = self.status(job_id)
            polls += 1
            if st["completed"]:
                if st["failed"]:
                    raise Fail(EXIT_FAILED, f"{what}: {st['failed']} of {st['total']} HQ tasks failed")
                if st["finished"] != st["total"]:
                    raise Fail(EXIT_FAILED, f"{what}: HQ job ended with {st}")
                return st, polls
            if time.monotonic() > deadline:
                raise Fail(EXIT_DEADLINE, f"{what}: the --duration bound passed ({st})")
            time.sleep(poll_s)


def true_job(Job, n, workdir):
    """One HQ job of n `/bin/true` tasks (1 cpu each, output discarded)."""
    job = Job(default_workdir=workdir)
    for _ in range(n):
        job.program(["/bin/true"], stdout=None, stderr=None)
    return job


def run(args):
    deadline = time.monotonic() + args.deadline_s
    interfaces = private_network()
    Job, LocalCluster, WorkerConfig, version = import_hq()
    if args.check:
        return {"hq_version": version, "interfaces": interfaces}
    result = {"hq_version": version, "interfaces": interfaces}
    with tempfile.TemporaryDirectory(prefix="hodei-bench-hq-") as tmp:
        server_dir = os.path.join(tmp, "server")
        workdir = os.path.join(tmp, "work")
        os.makedirs(workdir)
        cluster = LocalCluster(server_dir=server_dir)
        try:
            for _ in range(args.workers):
                cluster.start_worker(WorkerConfig(cores=args.slots))
            client = cluster.client()
            poller = Poller(client)

            if args.warmup > 0:
                warm = client.submit(true_job(Job, args.warmup, workdir))
                poller.wait(warm.id, args.poll_ms / 1000, deadline, "warm-up")

            # Throughput: N tasks in one job, built before the clock starts.
            job = true_job(Job, args.jobs, workdir)
            t0 = time.perf_counter()
            submitted = client.submit(job)
            t_acked = time.perf_counter()
            _, polls = poller.wait(submitted.id, args.poll_ms / 1000, deadline, "throughput")
            t1 = time.perf_counter()
            result["throughput_s"] = t1 - t0
            result["throughput_submit_s"] = t_acked - t0
            result["throughput_polls"] = polls

            # Latency: sequential single-task jobs, submit -> seen complete.
            lat = []
            for i in range(args.latency_jobs):
                job = true_job(Job, 1, workdir)
                t0 = time.perf_counter()
                submitted = client.submit(job)
                poller.wait(submitted.id, args.latency_poll_ms / 1000, deadline, f"latency job {i}")
                lat.append((time.perf_counter() - t0) * 1e6)
            result["latency_us"] = lat
        finally:
            cluster.stop()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="where to write the JSON result")
    p.add_argument("--check", action="store_true", help="only check that HQ can run here")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slots", type=int, default=4, help="cpus per worker")
    p.add_argument("--jobs", type=int, default=10_000, help="tasks in the throughput job")
    p.add_argument("--latency-jobs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--poll-ms", type=float, default=5.0, help="status polling, throughput")
    p.add_argument("--latency-poll-ms", type=float, default=1.0, help="status polling, latency")
    p.add_argument("--deadline-s", type=float, default=600.0)
    args = p.parse_args()
    try:
        result = run(args)
    except Fail as e:
        print(f"hq_bench: {e}", file=sys.stderr)
        sys.exit(e.code)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
