"""Starting or joining Ray, with a console people can read.

Ray's own chatter (worker output, Ray Train's and Ray Data's info lines, progress bars) stays in
Ray's log folder, which `init` names once; the jobs print their own stage headers, progress and
results. Lines that Ray workers must show on the driver's console (a training step, a resume)
travel through a `ConsoleRelay`, so they appear once and without Ray's per-process prefix.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter

from tcl.console import say


_settings: dict = {}


def configure(address: str | None = None, num_cpus: int | None = None) -> None:
    """Where `init` starts or joins Ray when the library first needs it (the jobs' --ray-address and
    --num-cpus): arguments are checked and files listed before Ray starts, so mistakes show at once."""
    _settings.update(address=address, num_cpus=num_cpus)


def init(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local instance with `num_cpus`
    logical CPUs (default max(8, cores): small machines need more slots than cores so that data
    loading and workers all get one) and its dashboard (Ray's state API, `ray job submit`).
    Without arguments, what `configure` said. Does nothing when Ray is up already."""
    import ray

    if ray.is_initialized():
        return
    address = address or _settings.get("address") or os.environ.get("RAY_ADDRESS")
    num_cpus = num_cpus or _settings.get("num_cpus")
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address:
        ray.init(address=address, **quiet)
    else:
        # The Parquet reader starts 32 footer-reading actors per read by default: slow on a small
        # machine. Read on the driver when a read is planned, so setting it here is enough.
        os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
        # Ray 2.60 turns token authentication on for new local instances and warns that it did:
        # kept on, without the warning.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(num_cpus=num_cpus or max(8, os.cpu_count() or 1), include_dashboard=True, **quiet)
    quiet_ray_data()
    resources = ray.cluster_resources()
    where = f"joined {address}" if address else "started a local instance"
    say(f"Ray: {where}, {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; "
        f"Ray's own logs: {logs_folder()}")


def quiet_ray_data() -> None:
    """No progress bars, execution banners or info lines from Ray Data on the console: the jobs
    print their own progress. Ray Data's log file (ray-data/ in Ray's log folder) keeps every line;
    its errors still reach the console."""
    import warnings

    from ray.data import DataContext
    from ray.data._internal.logging import SessionFileHandler

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler):
            handler.setLevel(logging.ERROR)
    # an actor pool given fewer blocks than actors (a small input): nothing for a user to act on
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)


def logs_folder() -> str:
    import ray

    try:
        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except AttributeError:  # a client connection: the folder is on the head node
        return "the session folder on the head node (/tmp/ray/session_latest/logs)"


def driver_actor(cls: type):
    """A 0-CPU actor of `cls` on the driver's node: small state the driver owns (counts, console
    lines), which must outlive any worker node a run loses."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, scheduling_strategy=here)(cls).remote()


class _RunMailbox:
    """The small state a run's driver owns and its workers write: console lines (ConsoleRelay),
    counts of skipped rows (tcl.ray.data.SkipCounter), the data stream's start
    (tcl.ray.data.DataPosition). One actor for the three: one process fewer to start twice."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.reasons: Counter[str] = Counter()
        self.position = 0

    def put(self, line: str) -> None:
        self.lines.append(line)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    def add_counts(self, reasons: dict[str, int]) -> None:
        self.reasons.update(reasons)

    def counts(self) -> dict[str, int]:
        return dict(self.reasons)

    def reset_counts(self) -> None:
        self.reasons.clear()

    def set_position(self, position: int) -> None:
        self.position = position

    def get_position(self) -> int:
        return self.position


def run_mailbox():
    """A _RunMailbox actor on the driver's node, for one run."""
    return driver_actor(_RunMailbox)


class ConsoleRelay:
    """Lines from Ray workers, printed on the driver's console while the driver waits.

    Create it on the driver and hand it to the workers (it pickles as an actor handle); workers
    call `put(line)` (fire and forget); on the driver, `with relay:` prints what arrives.
    """

    def __init__(self, mailbox=None) -> None:
        self.actor = mailbox if mailbox is not None else run_mailbox()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __reduce__(self):
        return (_relay_from_actor, (self.actor,))

    def put(self, line: str) -> None:
        self.actor.put.remote(line)

    def _print_arrivals(self) -> None:
        import ray

        for line in ray.get(self.actor.take.remote()):
            say(line)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._print_arrivals()
            except Exception:  # noqa: BLE001 - the relay must never take the job down
                time.sleep(1)

    def __enter__(self) -> "ConsoleRelay":
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="console-relay")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._print_arrivals()
        except Exception:  # noqa: BLE001
            pass


def _relay_from_actor(actor) -> ConsoleRelay:
    relay = ConsoleRelay.__new__(ConsoleRelay)
    relay.actor, relay._stop, relay._thread = actor, threading.Event(), None
    return relay
