"""The Ray executor on a cluster of several nodes on this machine (``ray.cluster_utils.Cluster``: one raylet per
node, a head node without CPUs): the environment check names the one node that has another yolo_attn; a node that
dies mid-run has its run retried on another node. Slow (several raylets, real runs): ``-m slow``.

Runs train yolov8n (and a block variant) for 1 epoch at imgsz 32 on 8 generated images.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray.cluster_utils import Cluster  # noqa: E402

import yolo_attn  # noqa: E402
import yolo_attn.executors as executors  # noqa: E402
from yolo_attn.executors import run_sweep  # noqa: E402
from yolo_attn.executors.ray import RayEnvironmentError, RayExecutor  # noqa: E402
from yolo_attn.plan import make_plan  # noqa: E402
from yolo_attn.store import ResultStore  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TRAIN = {"epochs": 1, "imgsz": 32, "batch": 4, "workers": 0, "warmup_epochs": 0}
FAST = {"flops_imgsz": 64, "bench_imgsz": 32, "bench_batch": 2, "bench_iters": 1, "bench_warmup": 0}
#: Epochs of the runs a node dies under: it is removed once both have written their first epoch, so it dies mid-run.
KILLED_EPOCHS = 10
#: Waits follow events (runs started, epochs written, the sweep ended); this cap only ends a wait for one that never
#: comes (a hang), however loaded the machine.
SAFETY_CAP_S = 1800.0


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """A head node without CPUs (runs go to the nodes a test adds); this process is the driver."""
    monkeypatch.chdir(tmp_path)  # Ray puts the driver's folder first on the workers' path: not a checkout
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    # Cluster writes the head's address to the default session folder's ray_current_cluster whatever temp_dir says
    # (Ray 2.x), and fails where that folder does not exist yet (a fresh machine)
    Path(ray._private.utils.get_ray_address_file(None)).parent.mkdir(parents=True, exist_ok=True)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "temp_dir": tmp})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    from yolo_attn.data import make_shapes_dataset

    return str(make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=8, n_val=4, imgsz=32))


def _connect(cluster) -> None:
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)


def test_the_node_with_another_yolo_attn_is_named(cluster, data, tmp_path):
    fake = tmp_path / "fake"
    shutil.copytree(Path(yolo_attn.__file__).parent, fake / "yolo_attn", ignore=shutil.ignore_patterns("__pycache__"))
    init = fake / "yolo_attn" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{yolo_attn.__version__}"', '"0.0.1"'))
    good = cluster.add_node(num_cpus=1)
    path = os.pathsep.join([str(fake), *filter(None, [os.environ.get("PYTHONPATH")])])
    bad = cluster.add_node(num_cpus=1, env_vars={"PYTHONPATH": path})  # its workers import the fake first
    _connect(cluster)
    plan = make_plan(data, bases=["yolov8n.yaml"], blocks=["bot"], train=TRAIN)
    with pytest.raises(RayEnvironmentError) as e:
        run_sweep(plan, tmp_path / "o", settings=FAST, executor=RayExecutor())
    msg = str(e.value)
    assert f"({bad.node_id[:8]})" in msg and "the node has 0.0.1" in msg, msg
    assert good.node_id[:8] not in msg and msg.count(" lacks ") == 1, msg
    assert not ResultStore(tmp_path / "o").lines()


def _wait_for(what) -> None:
    t_end = time.monotonic() + SAFETY_CAP_S
    while not what():
        assert time.monotonic() < t_end, f"the awaited event did not happen within the {SAFETY_CAP_S:.0f} s safety cap"
        time.sleep(0.2)


def _epoch_written(key: str) -> bool:
    """Run ``key`` has finished an epoch on its node (the nodes share this machine's temporary folder)."""
    base = Path(tempfile.gettempdir()) / "yolo_attn-ray"
    return any(any(w.rglob("results.csv")) for w in base.glob(f"{key}-*")) if base.is_dir() else False


def test_a_node_that_dies_mid_run_has_its_run_retried(cluster, data, tmp_path, monkeypatch):
    starts: list[str] = []
    monkeypatch.setattr(executors._Progress, "started", lambda self, run, where: starts.append(run.key))
    cluster.add_node(num_cpus=1)
    doomed = cluster.add_node(num_cpus=1)
    _connect(cluster)
    out = tmp_path / "o"
    plan = make_plan(data, bases=["yolov8n.yaml"], blocks=["bot"], train={**TRAIN, "epochs": KILLED_EPOCHS})
    th = threading.Thread(target=run_sweep, args=(plan, out), kwargs={"settings": FAST, "executor": RayExecutor()})
    th.start()
    _wait_for(lambda: len(starts) >= 2)  # one run on each node
    assert len(starts) == 2
    _wait_for(lambda: all(_epoch_written(r.key) for r in plan))  # both mid-run, epochs left
    cluster.remove_node(doomed, allow_graceful=False)
    cluster.add_node(num_cpus=1)  # a replacement joins, as an autoscaler would start one
    th.join(SAFETY_CAP_S)
    assert not th.is_alive(), f"the sweep did not end within the {SAFETY_CAP_S:.0f} s safety cap"
    lines = ResultStore(out).lines()
    assert sorted(r.key for r in lines) == sorted(r.key for r in plan)  # one record per planned run
    assert all(r.ok for r in lines), [r.error for r in lines]
    assert len(starts) == 3  # the lost run started again
