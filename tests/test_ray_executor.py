"""The Ray executor on a local Ray instance (CPU only): the same records as the local executor, retries of a killed
worker, failed records once the retries are spent, the environment check before any training, Ctrl-C and a killed
driver, both resumed by the next sweep.

One Ray instance (2 CPUs) serves the module; its session folder is a temporary folder removed at the end, and the
teardown checks that none of its processes is left. Runs train yolov8n (and block variants) for 1 epoch at imgsz 32
on 8 generated images. Workers are found by the title Ray gives them while they execute a run (``ray::run:<name>``),
read from ``/proc``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local test instance: no token to set up

import yolo_attn  # noqa: E402
import yolo_attn.executors as executors  # noqa: E402
from yolo_attn.cli import main  # noqa: E402
from yolo_attn.executors import run_sweep  # noqa: E402
from yolo_attn.executors.ray import RayExecutor, _probe  # noqa: E402
from yolo_attn.integration import cpu_threads  # noqa: E402
from yolo_attn.plan import make_plan  # noqa: E402
from yolo_attn.store import ResultStore  # noqa: E402

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds Ray workers through /proc"),
]

TRAIN = {"epochs": 1, "imgsz": 32, "batch": 4, "workers": 0, "warmup_epochs": 0}
FAST = {"flops_imgsz": 64, "bench_imgsz": 32, "bench_batch": 2, "bench_iters": 1, "bench_warmup": 0}
# Fields that say when, where and how fast, not what a run gave
VOLATILE = {
    "pid",
    "started",
    "finished",
    "wall_s",
    "train_s",
    "cpu_s",
    "latency_ms",
    "peak_mb",
    "save_dir",
    "model_yaml",
}
CPUS = 2


def _cmdlines() -> dict[int, str]:
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:  # ended meanwhile
                pass
    return out


def _workers() -> dict[int, str]:
    """Worker processes executing a run now (Ray titles them ``ray::run:<name>-<key8>``)."""
    return {pid: cmd for pid, cmd in _cmdlines().items() if cmd.startswith("ray::run:")}


#: Every wait here follows an event (a marker file, a worker process, a record, an epoch written, a free CPU); this cap
#: only ends a wait for an event that never comes (a hang). Not a guess of how long anything takes: a loaded machine
#: (several trainings beside the suite) only makes the waits longer.
SAFETY_CAP_S = 1800.0


def _wait_for(what, cap_s: float = SAFETY_CAP_S, step: float = 0.2):
    """Poll ``what()`` until it returns something true (returned)."""
    t_end = time.monotonic() + cap_s
    while not (found := what()):
        if time.monotonic() > t_end:
            raise AssertionError(f"the awaited event did not happen within the {cap_s:.0f} s safety cap (a hang?)")
        time.sleep(step)
    return found


def _join(th: threading.Thread) -> None:
    th.join(SAFETY_CAP_S)
    assert not th.is_alive(), f"the sweep did not end within the {SAFETY_CAP_S:.0f} s safety cap (a hang?)"


def _epoch_written(key: str, pid: int) -> bool:
    """The run ``key`` executing in worker ``pid`` has finished an epoch (Ultralytics wrote its results.csv)."""
    work = Path(tempfile.gettempdir()) / "yolo_attn-ray" / f"{key}-{pid}"
    return work.is_dir() and any(work.rglob("results.csv"))


def _settled() -> bool:
    """No run executing and every CPU free again."""
    return not _workers() and ray.available_resources().get("CPU") == CPUS


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance for the module (short session path: Ray's socket paths must fit 107 characters)."""
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(
        num_cpus=CPUS,
        num_gpus=0,
        object_store_memory=80 << 20,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tmp,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        t_end = (
            time.monotonic() + SAFETY_CAP_S
        )  # they end on their own; the cap only stops waiting for ones that never do
        while True:
            left = {pid: cmd for pid, cmd in _cmdlines().items() if tmp in cmd or cmd.startswith("ray::")}
            if not left or time.monotonic() > t_end:
                break
            time.sleep(0.5)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, f"Ray processes left after shutdown: {left}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    from yolo_attn.data import make_shapes_dataset

    return str(make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=8, n_val=4, imgsz=32))


def _plan(data: str, n: int, epochs: int = 1):
    """The baseline and up to three block variants of yolov8n."""
    train = {**TRAIN, "epochs": epochs}
    return make_plan(data, bases=["yolov8n.yaml"], blocks=["bot", "dat", "coat"][: n - 1], train=train)


#: Epochs of a run that a test kills once its first epoch is written: the kill lands with epochs left, on a fast quiet
#: machine and a loaded one alike.
KILLED_EPOCHS = 10


def _same(rec) -> dict:
    return {k: v for k, v in rec.to_dict().items() if k not in VOLATILE}


def _epochs(save_dir: str) -> list[str]:
    """results.csv rows without the time column: losses and metrics epoch by epoch."""
    rows = (Path(save_dir) / "results.csv").read_text().splitlines()
    return [",".join(c for i, c in enumerate(r.split(",")) if i != 1) for r in rows]


class _NoRay(RayExecutor):
    """Fails when anything would connect to Ray."""

    def connect(self) -> None:
        raise AssertionError("connected to Ray with nothing to execute")


def test_ray_is_imported_only_for_a_ray_sweep():
    code = "import sys, yolo_attn.cli, yolo_attn.executors.ray; print('ray' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SAFETY_CAP_S)
    assert p.stdout.strip() == "False", p.stderr[-2000:]


# --------------------------------------------------------------------------------------------------- parity, resume
def test_records_match_the_local_executor(cluster, data, tmp_path):
    """4 runs locally and on Ray: the same records (metrics, GFLOPs, keys...), the same losses epoch by epoch, the
    files the report reads where the local executor puts them; a store with nothing left does not start Ray."""
    plan = _plan(data, 4)
    with cpu_threads(1):  # what a 1-CPU Ray run uses: float sums are the same only for the same thread count
        local = run_sweep(plan, tmp_path / "local", devices="cpu", settings=FAST)
    out = tmp_path / "ray"
    remote = run_sweep(plan, out, settings=FAST, executor=RayExecutor(cpus_per_run=1))
    assert [r.status for r in remote] == ["done"] * 4, [r.error for r in remote]
    assert [r.key for r in remote] == [r.key for r in local] == [r.key for r in plan]
    for lo, ra in zip(local, remote):
        assert _same(ra) == _same(lo)
        assert _epochs(ra.save_dir) == _epochs(lo.save_dir)
        assert Path(ra.save_dir).parent == (out / "runs").resolve() and (Path(ra.save_dir) / "args.yaml").is_file()
        assert not list(Path(ra.save_dir).rglob("*.pt"))  # weights stay on the node unless asked for
        assert ra.block is None or Path(ra.model_yaml).read_text() == Path(lo.model_yaml).read_text()
        assert (out / "logs" / f"{ra.name}-{ra.key[:8]}.log").is_file()  # empty: YOLO_VERBOSE=false here
    assert not list((out / "running").glob("*.json"))
    again = run_sweep(plan, out, settings=FAST, executor=_NoRay())
    assert [r.to_dict() for r in again] == [r.to_dict() for r in remote] and len(ResultStore(out).lines()) == 4


# --------------------------------------------------------------------------------------------------- faults
def _sweep_in_thread(plan, out, executor) -> threading.Thread:
    th = threading.Thread(target=run_sweep, args=(plan, out), kwargs={"settings": FAST, "executor": executor})
    th.start()
    return th


def _kill_running_worker(out: Path, key: str) -> int:
    """SIGKILL the worker executing run ``key`` once it has finished its first epoch (of KILLED_EPOCHS); its pid."""
    _wait_for(lambda: (out / "running" / f"{key}.json").is_file())
    pid = _wait_for(lambda: next((p for p, cmd in _workers().items() if key[:8] in cmd), None))
    _wait_for(lambda: _epoch_written(key, pid))  # well into the run, which has epochs left
    os.kill(pid, signal.SIGKILL)
    return pid


def test_killed_worker_is_retried_one_record_per_run(cluster, data, tmp_path):
    plan = _plan(data, 1, KILLED_EPOCHS)
    th = _sweep_in_thread(plan, tmp_path, RayExecutor(retries=1))
    victim = _kill_running_worker(tmp_path, plan[0].key)
    _join(th)
    (rec,) = ResultStore(tmp_path).lines()  # exactly one record per planned run
    assert rec.key == plan[0].key and rec.ok, rec.error
    assert rec.pid != victim  # the retry's
    assert not (Path(tempfile.gettempdir()) / "yolo_attn-ray").exists()  # the killed worker's folder too


def test_spent_retries_give_a_failed_record(cluster, data, tmp_path):
    plan = _plan(data, 1, KILLED_EPOCHS)
    th = _sweep_in_thread(plan, tmp_path, RayExecutor(retries=0))
    _kill_running_worker(tmp_path, plan[0].key)
    _join(th)
    (rec,) = ResultStore(tmp_path).lines()
    assert rec.status == "failed" and rec.error.startswith("WorkerCrashedError (after 0 retries)"), rec.error


# --------------------------------------------------------------------------------------------------- environment check
def test_missing_dataset_stops_the_sweep_before_training(cluster, tmp_path, capsys):
    args = ["ablate", "--data", "/nonexistent/shapes.yaml", "--blocks", "dat", "--out", str(tmp_path), "epochs=1"]
    assert main([*args, "--ray", cluster]) == 2
    err = capsys.readouterr().err
    assert "yolo-attn ablate: error: the Ray cluster cannot execute this sweep" in err
    assert "lacks /nonexistent/shapes.yaml (not found)" in err and "node " in err and "Traceback" not in err
    assert not ResultStore(tmp_path).lines() and not (tmp_path / "runs").exists()


def _fake_package(root: Path, version: str | None = None, edit: bool = False) -> str:
    """A yolo_attn for ``py_modules``: another version, or this one with one source line changed."""
    pkg = root / "yolo_attn"
    shutil.copytree(Path(yolo_attn.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    init = pkg / "__init__.py"
    if version:
        init.write_text(init.read_text().replace(f'"{yolo_attn.__version__}"', f'"{version}"'))
    if edit:
        init.write_text(init.read_text() + "\n# edited on the node\n")
    return str(pkg)


CHECKS = """
import sys
from yolo_attn.executors.ray import RayEnvironmentError, RayExecutor
from yolo_attn.plan import make_plan

address, data, other, edited = sys.argv[1:]
plan = make_plan(data, bases=["yolov8n.yaml"], blocks=["dat"], train={"epochs": 1})
for name, kw in [
    ("other", {"runtime_env": {"py_modules": [other]}}),
    ("edited", {"runtime_env": {"py_modules": [edited]}}),
    ("shipped", {"ship_package": True}),
]:
    ex = RayExecutor(address, **kw)
    try:
        ex.check(plan)
        print(name, "passed")
    except RayEnvironmentError as e:
        print(name, repr(str(e)))
    finally:
        ex.close()
"""


def test_node_with_another_yolo_attn_is_named(cluster, data, tmp_path):
    """Jobs whose nodes import another yolo_attn (shipped through runtime_env: another version, or other code) stop
    at the check; the driver's own package shipped the same way (``ship_package``) passes. A runtime_env belongs to
    the job, so each check is its own driver (a fresh process connecting to the module's instance)."""
    other, edited = _fake_package(tmp_path / "a", version="0.0.1"), _fake_package(tmp_path / "b", edit=True)
    p = subprocess.run(
        [sys.executable, "-c", CHECKS, cluster, data, other, edited],
        capture_output=True,
        text=True,
        timeout=SAFETY_CAP_S,
        cwd=tmp_path,  # Ray puts the driver's folder first on the workers' path: not the checkout's yolo_attn
    )
    said = dict(
        line.split(" ", 1) for line in p.stdout.splitlines() if line.split(" ", 1)[0] in {"other", "edited", "shipped"}
    )
    assert p.returncode == 0 and len(said) == 3, p.stderr[-3000:]
    assert re.search(r"node \S+ \(\w{8}\) \[.*\] lacks yolo_attn \S+ \(the node has 0\.0\.1\)", said["other"]), said
    assert "with the driver's sources (source digest" in said["edited"], said
    assert said["shipped"] == "passed", said


def test_node_without_yolo_attn_is_named(monkeypatch):
    """The node-side check where yolo_attn cannot be imported (run here: the probe needs no Ray)."""
    monkeypatch.setitem(sys.modules, "yolo_attn", None)  # import yolo_attn -> ModuleNotFoundError
    found = _probe(["/nonexistent/shapes.yaml"], {"yolo_attn": "0.1.0", "digest": "x"})
    assert found["missing"][0].startswith("yolo_attn 0.1.0 (ModuleNotFoundError")
    assert found["missing"][1] == "/nonexistent/shapes.yaml (not found)"


# --------------------------------------------------------------------------------------------------- Ctrl-C, killed driver
def test_ctrl_c_cancels_the_runs_and_leaves_a_resumable_store(cluster, data, tmp_path, monkeypatch):
    """Ctrl-C raises KeyboardInterrupt in the driver's loop (here: when the first run is said to start): the tasks
    are cancelled, their workers stopped, nothing is recorded."""

    def interrupt(self, run, device):
        raise KeyboardInterrupt

    monkeypatch.setattr(executors._Progress, "started", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_plan(data, 2), tmp_path, settings=FAST, executor=RayExecutor())
    _wait_for(_settled)
    assert not ResultStore(tmp_path).lines()


class _Spy(RayExecutor):
    """A RayExecutor that notes the runs it is given."""

    given: list

    def __call__(self, runs, ctx):
        self.given = [r.key for r in runs]
        return super().__call__(runs, ctx)


def test_killed_driver_then_the_same_sweep_redoes_only_unfinished_runs(cluster, data, tmp_path):
    """A driver SIGKILLed while it executes the second run of its plan (the first has a record): Ray stops that run;
    the same sweep started again executes exactly the run without a record."""
    out = tmp_path / "o"
    plan = make_plan(data, bases=["yolov8n.yaml"], blocks=["bot"], train=TRAIN)
    run_sweep(plan[:1], out, settings=FAST, executor=RayExecutor())  # finished before the driver below starts
    code = (
        "from yolo_attn.executors import run_sweep; from yolo_attn.executors.ray import RayExecutor;"
        "from yolo_attn.plan import make_plan;"
        f"p = make_plan({data!r}, bases=['yolov8n.yaml'], blocks=['bot'], train={TRAIN!r});"
        f"run_sweep(p, {str(out)!r}, settings={FAST!r}, executor=RayExecutor({cluster!r}))"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:  # the driver marks a run in progress when its task has started
        _wait_for(lambda: (out / "running" / f"{plan[1].key}.json").is_file() or driver.poll() is not None)
        assert _workers() and driver.poll() is None
    finally:
        driver.kill()
        err = driver.communicate(timeout=SAFETY_CAP_S)[1].decode(errors="replace")
    first = {r.key for r in ResultStore(out).lines()}
    assert first == {plan[0].key}, err[-3000:]
    _wait_for(_settled)  # the dead driver's run does not go on
    spy = _Spy()
    recs = run_sweep(plan, out, settings=FAST, executor=spy)
    assert spy.given == [plan[1].key]
    assert [r.ok for r in recs] == [True, True] and len(ResultStore(out).lines()) == 2


@pytest.mark.slow
def test_sigint_to_the_cli_driver_then_resume(cluster, data, tmp_path):
    """Ctrl-C in a terminal: SIGINT to the process group of ``yolo-attn ablate --ray``: one line saying what is
    recorded, exit status 130; the rerun finishes the rest."""
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "yolo_attn.cli", "ablate", "--data", data, "--blocks", "bot", "dat", "--out", str(out)]
    cmd += ["--ray", cluster, *(f"--{k.replace('_', '-')}={v}" for k, v in FAST.items())]
    cmd += [f"{k}={v}" for k, v in TRAIN.items()]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    store = ResultStore(out)
    _wait_for(lambda: store.lines() or p.poll() is not None)
    os.killpg(p.pid, signal.SIGINT)
    log = p.communicate(timeout=SAFETY_CAP_S)[0]
    first = {r.key for r in store.lines()}
    said = f"interrupted: {len(first)} of 3 runs recorded in {out}; run the same command again to resume"
    assert p.returncode == 130 and log.rstrip().splitlines()[-1] == said and "Traceback" not in log, log[-3000:]
    assert 1 <= len(first) < 3
    _wait_for(_settled)
    assert main(cmd[3:]) == 0
    assert len(store.lines()) == 3 and all(r.ok for r in store.lines())
