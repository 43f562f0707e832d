"""`jvpcli compute --executor ray`: a sweep's runs as Ray tasks, with every guarantee of a local
sweep.

Against a real Ray: one in-process local instance (``ray.init(num_cpus=2)``) for the in-process
commands, and one cluster started with ``ray start --head`` in a subprocess for the commands run
as a user runs them (a driver process to interrupt and kill) and for ``RAY_ADDRESS``. Each is
started once for this module. Results are checked bit for bit against the local executor, and
against torch.autograd.functional.jvp; what a run did is told from its output's metadata and the
files its function leaves, never from timing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from jvpcli.cli import app

ray = pytest.importorskip("ray")

FUNCTIONS = """
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).parent
with (HERE / "imports.log").open("a") as log:
    log.write(f"{os.getpid()}\\n")


def smooth(x):
    return x.sin() * x


def boom(x):
    raise ValueError("the user's function gave up")


def die(x):
    # Ends its own process, as an out-of-memory kill or a segfault would.
    os.kill(os.getpid(), signal.SIGKILL)


def die_once(x):
    marker = HERE / "died-once"
    if not marker.exists():
        marker.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return x.sin() * x


def gated(x):
    # Blocks while the file "gate" exists, on the runs whose input starts at 2 or more.
    start = float(x.detach().flatten()[0])
    if start >= 2 and (HERE / "gate").exists():
        (HERE / f"blocked-{start:g}").write_text("blocked")
        for _ in range(1200):
            time.sleep(0.1)
        (HERE / "unblocked").write_text("ran to the end")
    return x.sin() * x


class Tiny(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.first = nn.Linear(4, width)
        self.second = nn.Linear(width, 3)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))
"""

STARTS = (0.5, 1.0, 2.0, 3.0)


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One in-process local Ray instance for the in-process commands of this module."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray cluster started as a user starts one (``ray start --head``), its address; stopped
    afterwards by ending the one ``ray start --block`` process this fixture started (which stops
    what it started), never with ``ray stop``, which would stop every Ray on the machine."""
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray-cluster")
    # No token authentication: the drivers of these tests connect without one.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            f"--port={port}", "--num-cpus=2", "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=(temp / "ray.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    address = f"{ray.util.get_node_ip_address()}:{port}"  # where ray start binds
    try:
        deadline = time.monotonic() + 120
        while True:
            probe = subprocess.run(
                [sys.executable, "-m", "ray.scripts.scripts", "status", f"--address={address}"],
                env=env,
                capture_output=True,
            )
            if probe.returncode == 0:
                break
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ray start did not come up: " + (temp / "ray.log").read_text())
            time.sleep(1)
        yield address
    finally:
        # ray start stops what it started on SIGTERM, slowly (half a minute here): past a few
        # seconds, the whole process group it leads (its GCS, raylet and workers) is killed.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "functions.py").write_text(FUNCTIONS)
    data = tmp_path / "data"
    data.mkdir()
    generator = torch.Generator().manual_seed(0)
    save_file({"x": torch.randn(3, 4, generator=generator)}, data / "v.safetensors")
    for start in STARTS:
        x = start + torch.rand(3, 4, generator=generator)
        save_file({"x": x}, data / f"x{start:g}.safetensors")
    return tmp_path


def write_sweep(folder: Path, function: str = "smooth", extra: str = "") -> Path:
    inputs = ", ".join(f"data/x{start:g}.safetensors" for start in STARTS)
    config = folder / "sweep.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            function: functions.py:{function}
            v: data/v.safetensors
            output: out/{{name}}.safetensors
            sweep:
              inputs: [{inputs}]
              method: [forward, double-backward]
            """
        )
        + textwrap.dedent(extra)
    )
    return config


def outputs(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {path.stem: load_file(path) for path in sorted(folder.glob("*.safetensors"))}


def metadata(path: Path) -> dict[str, str]:
    with safe_open(path, "pt") as file:
        return file.metadata()


def leftovers(folder: Path) -> list[Path]:
    """Temporary files an interrupted write would leave."""
    return sorted(folder.rglob("*.tmp"))


def timeless(document: Any) -> Any:
    """A JSON document or its parts without what differs between two runs of the same sweep:
    times, and where it ran."""
    if isinstance(document, dict):
        return {
            key: timeless(value)
            for key, value in document.items()
            if "seconds" not in key and key not in ("node", "executor")
        }
    if isinstance(document, list):
        return [timeless(item) for item in document]
    return document


# Results and reports: the same as a local sweep's


def test_a_ray_sweep_writes_what_a_local_one_does_bit_for_bit(workspace, local_ray) -> None:
    config = write_sweep(workspace)
    local = invoke("compute", config, "-o", f"{workspace}/local/", "--json")
    assert local.exit_code == 0, local.output
    remote = invoke("compute", config, "-o", f"{workspace}/ray/", "--executor", "ray", "--json")
    assert remote.exit_code == 0, remote.output
    here, there = outputs(workspace / "local"), outputs(workspace / "ray")
    assert len(here) == 8 and here.keys() == there.keys()
    for name, tensors in here.items():
        assert tensors.keys() == there[name].keys()
        for key, tensor in tensors.items():
            assert torch.equal(tensor, there[name][key]), (name, key)
        # And right, by an independent oracle.
        start = re.search(r"x([\d.]+)", name)[1]
        x = load_file(workspace / f"data/x{start}.safetensors")["x"]
        v = load_file(workspace / "data/v.safetensors")["x"]
        value, expected = torch.autograd.functional.jvp(lambda t: t.sin() * t, x, v)
        torch.testing.assert_close(there[name]["jvp"], expected)
        torch.testing.assert_close(there[name]["func_output"], value)
        recorded = metadata(workspace / "ray" / f"{name}.safetensors")
        assert recorded["jvpcli.executor"] == "ray"
        assert recorded["jvpcli.node"].startswith(os.uname().nodename)
        assert metadata(workspace / "local" / f"{name}.safetensors")["jvpcli.executor"] == "local"
    local_json = json.loads(local.stdout)
    remote_json = json.loads(remote.stdout[remote.stdout.index("{") :])
    for document in (local_json, remote_json):
        for run in document["runs"]:
            run.pop("output")
    assert timeless(remote_json) == timeless(local_json)


def test_a_model_with_a_weight_direction_matches_the_local_executor(workspace, local_ray):
    config = workspace / "model.yaml"
    save_file({"x": torch.randn(5, 4)}, workspace / "data/features.safetensors")
    config.write_text(
        textwrap.dedent(
            """\
            inputs: data/features.safetensors
            seed: 7
            output: out/{name}.safetensors
            sweep:
              function:
                - {target: functions.py:Tiny, init: {width: 8}}
                - {target: functions.py:Tiny, init: {width: 16}}
              v_params: [{random: normal, seed: 3}, {random: rademacher, seed: 4}]
            """
        )
    )
    local = invoke("compute", config, "-o", f"{workspace}/local/")
    assert local.exit_code == 0, local.output
    result = invoke("compute", config, "-o", f"{workspace}/ray/", "--executor", "ray")
    assert result.exit_code == 0, result.output
    here, there = outputs(workspace / "local"), outputs(workspace / "ray")
    assert len(here) == 4
    for name in here:
        for key in here[name]:
            assert torch.equal(here[name][key], there[name][key]), (name, key)


def test_junit_report_is_the_local_one(workspace, local_ray) -> None:
    config = write_sweep(
        workspace, extra="runs:\n  - name: good\n  - name: bad\n    function: functions.py:boom\n"
    )

    def cases(path: Path) -> list[tuple[Any, ...]]:
        root = ET.parse(path).getroot()
        return sorted(
            (
                case.get("name"),
                case.get("classname"),
                [(child.tag, child.get("message")) for child in case],
            )
            for case in root.iter("testcase")
        )

    for executor in ("local", "ray"):
        result = invoke(
            "compute", config, "-o", f"{workspace}/{executor}/", "--executor", executor,
            "--junit-xml", workspace / f"{executor}.xml",
        )  # fmt: skip
        assert result.exit_code == 1, result.output
    assert cases(workspace / "ray.xml") == cases(workspace / "local.xml")
    assert len(cases(workspace / "ray.xml")) == 16
    failed = [
        case for case in cases(workspace / "ray.xml") if ("failure", case[2][0][1]) in case[2]
    ]
    assert len(failed) == 8 and all(case[0].startswith("bad") for case in failed)


def test_a_config_may_ask_for_ray_and_the_summary_counts_every_run(workspace, local_ray):
    config = write_sweep(workspace, extra="executor: ray\nresources: {num_cpus: 1}\n")
    result = invoke("compute", config)
    assert result.exit_code == 0, result.output
    assert "ray: 8 runs on" in result.stderr
    assert "8 runs: 8 ok" in result.stdout
    assert len(outputs(workspace / "out")) == 8


def test_each_worker_imports_the_function_module_once(workspace, local_ray) -> None:
    config = write_sweep(workspace)
    assert invoke("compute", config, "--executor", "ray").exit_code == 0
    imports = (workspace / "imports.log").read_text().split()
    # The driver imports it to check the runs; each worker once, for all its tasks.
    assert sorted(set(imports)) == sorted(imports)
    assert 2 <= len(imports) <= 3  # the driver and one or two workers, for eight runs


# Failures: isolated, and never exit 0


def test_a_failing_run_fails_alone(workspace, local_ray) -> None:
    config = write_sweep(
        workspace, extra="runs:\n  - name: good\n  - name: bad\n    function: functions.py:boom\n"
    )
    result = invoke("compute", config, "--executor", "ray")
    assert result.exit_code == 1
    assert "8 of 16 runs failed" in result.stderr
    assert "the user's function gave up" in result.stdout + result.stderr
    written = outputs(workspace / "out")
    assert len(written) == 8 and all(name.startswith("good") for name in written)


def test_a_worker_that_dies_fails_its_run_and_a_retry_recovers_it(workspace, local_ray):
    config = write_sweep(
        workspace, extra="runs:\n  - name: good\n  - name: dead\n    function: functions.py:die\n"
    )
    result = invoke("compute", config, "--executor", "ray")
    assert result.exit_code == 1
    assert "worker process died" in result.stdout
    assert "--max-retries" in result.stdout
    assert sorted(outputs(workspace / "out")) == sorted(
        f"good-x{start:g}-{method}" for start in STARTS for method in ("forward", "double-backward")
    )
    assert leftovers(workspace) == []

    # A function that kills its worker the first time only: one retry, and every run is done.
    once = write_sweep(workspace, "die_once")
    result = invoke(
        "compute", once, "--executor", "ray", "--max-retries", "1", "-o", f"{workspace}/once/"
    )
    assert result.exit_code == 0, result.output
    assert (workspace / "died-once").exists()
    assert len(outputs(workspace / "once")) == 8


def test_fail_fast_cancels_the_runs_not_yet_finished(workspace, local_ray) -> None:
    config = write_sweep(
        workspace,
        "gated",
        extra="runs:\n  - name: bad\n    function: functions.py:boom\n  - name: slow\n",
    )
    (workspace / "gate").write_text("closed")
    started = time.monotonic()
    result = invoke("compute", config, "--executor", "ray", "--fail-fast")
    assert result.exit_code == 1
    assert "--fail-fast: the rest did not run" in result.stderr
    assert time.monotonic() - started < 100  # the blocked runs were cancelled, not awaited
    assert not any(name.startswith("slow-x2") for name in outputs(workspace / "out"))
    assert not (workspace / "unblocked").exists()
    assert leftovers(workspace) == []


# Checked before anything is submitted (exit 2)


def test_every_run_is_checked_before_the_first_is_submitted(workspace, local_ray) -> None:
    config = write_sweep(
        workspace,
        extra="runs:\n  - name: good\n  - name: missing\n    v: data/absent.safetensors\n",
    )
    result = invoke("compute", config, "--executor", "ray")
    assert result.exit_code == 2
    assert "absent.safetensors" in result.stderr
    assert not (workspace / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("device: cuda\n", "asks Ray for 1 GPUs"),
        ("resources: {num_gpus: 2}\n", "asks Ray for 2 GPUs"),
        ("resources: {num_cpus: 64}\n", "asks Ray for 64 CPUs"),
        ("resources: {memory: 100TB}\n", "bytes of memory"),
    ],
)
def test_a_run_the_cluster_cannot_hold_is_refused(workspace, local_ray, extra, message) -> None:
    result = invoke("compute", write_sweep(workspace, extra=extra), "--executor", "ray")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "could never start" in result.stderr
    assert not (workspace / "out").exists()


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ("{num_cpus: -1}", "'resources.num_cpus' must be a number at least 0"),
        ("{num_gpus: 1.5}", "not a fraction above one"),
        ("{num_gpus: yes}", "'resources.num_gpus' must be a number"),
        ("{memory: 4 parsecs}", "'resources.memory' must be a number of bytes or a size"),
        ("{memory: 0}", "'resources.memory' must be"),
        ("{cpus: 1}", "unknown key 'resources.cpus'"),
        ("[1, 2]", "'resources' must be a mapping"),
        ("{}", "'resources' must be a mapping"),
    ],
)
def test_bad_resources_are_config_errors(workspace, resources, message) -> None:
    config = write_sweep(workspace, extra=f"resources: {resources}\n")
    result = invoke("validate", config)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "sweep.yaml:" in result.stderr  # where, in the file
    assert "Traceback" not in result.output


def test_memory_sizes_read_as_bytes() -> None:
    from jvpcli.config.validate import memory_bytes

    assert memory_bytes("4GB") == 4 * 10**9
    assert memory_bytes("512MiB") == 512 * 2**20
    assert memory_bytes("1.5 GiB") == 3 * 2**29
    assert memory_bytes(1024) == 1024
    assert memory_bytes(True) is None and memory_bytes("-1GB") is None and memory_bytes(0) is None


def test_one_command_runs_on_one_executor(workspace) -> None:
    config = write_sweep(workspace)
    config.write_text(config.read_text() + "runs:\n  - name: a\n  - name: b\n    executor: ray\n")
    result = invoke("compute", config)
    assert result.exit_code == 2
    assert "different executors" in result.stderr
    assert not (workspace / "out").exists()


@pytest.mark.parametrize(
    "option", [["--ray-address", "10.0.0.1:6379"], ["--max-retries", "2"], ["--ray-upload"]]
)
def test_ray_options_without_ray_are_refused(workspace, option) -> None:
    result = invoke("compute", write_sweep(workspace), *option)
    assert result.exit_code == 2
    assert "only applies with --executor ray" in result.stderr
    assert not (workspace / "out").exists()


def test_an_unknown_executor_is_refused_with_the_choices(workspace) -> None:
    result = invoke("compute", write_sweep(workspace), "--executor", "slurm")
    assert result.exit_code == 2
    assert "must be one of local, ray" in result.stderr


def test_a_cluster_that_cannot_be_reached_is_a_config_error(workspace) -> None:
    port = _free_port()  # nothing listens there
    script = textwrap.dedent(
        f"""
        import sys
        from jvpcli.cli import main
        sys.argv = ["jvpcli", "compute", {str(write_sweep(workspace))!r}, "--executor", "ray",
                    "--ray-address", "127.0.0.1:{port}"]
        main()
        """
    )
    env = {**os.environ, "RAY_gcs_rpc_server_connect_timeout_s": "3"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 2, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (workspace / "out").exists()


def test_without_ray_installed_the_error_names_the_extra(workspace, tmp_path_factory) -> None:
    blocker = tmp_path_factory.mktemp("no-ray")
    (blocker / "ray").mkdir()
    (blocker / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "jvpcli", "compute", str(write_sweep(workspace)), "--executor",
         "ray"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pip install 'jvpcli[ray]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (workspace / "out").exists()
    # The local executor needs no Ray.
    local = subprocess.run(
        [sys.executable, "-m", "jvpcli", "compute", str(write_sweep(workspace)), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr


# --shard, --ray-upload


def test_shards_on_ray_cover_the_sweep_once(workspace, local_ray) -> None:
    config = write_sweep(workspace)
    for shard in ("1/3", "2/3", "3/3"):
        result = invoke("compute", config, "--executor", "ray", "--shard", shard, "--quiet")
        assert result.exit_code == 0, result.output
    assert invoke("compute", config, "-o", f"{workspace}/local/", "--quiet").exit_code == 0
    sharded, local = outputs(workspace / "out"), outputs(workspace / "local")
    assert sharded.keys() == local.keys() and len(local) == 8
    for name in local:
        assert torch.equal(sharded[name]["jvp"], local[name]["jvp"])


def test_upload_ships_the_config_folder_to_the_workers(workspace, cluster) -> None:
    config = write_sweep(workspace)
    driver = run_driver(config, cluster, "--ray-upload")
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert "uploaded to each worker" in stderr
    assert invoke("compute", config, "-o", f"{workspace}/local/", "--quiet").exit_code == 0
    uploaded, local = outputs(workspace / "out"), outputs(workspace / "local")
    assert uploaded.keys() == local.keys()
    for name in local:
        assert torch.equal(uploaded[name]["jvp"], local[name]["jvp"])
        # The worker read its own copy of the folder, not the original.
        settings = json.loads(
            metadata(workspace / "out" / f"{name}.safetensors")["jvpcli.settings"]
        )
        assert re.fullmatch(r"/.+/data/x[\d.]+\.safetensors", settings["inputs"])
        assert not settings["inputs"].startswith(str(workspace))
        assert not settings["function"]["target"].startswith(str(workspace))
    assert leftovers(workspace) == []


def test_an_upload_too_large_is_refused_before_anything_runs(workspace, monkeypatch) -> None:
    import jvpcli.runner.ray_executor as ray_executor

    monkeypatch.setattr(ray_executor, "UPLOAD_LIMIT", 1024)
    (workspace / "big.bin").write_bytes(b"\0" * 4096)
    result = invoke("compute", write_sweep(workspace), "--executor", "ray", "--ray-upload")
    assert result.exit_code == 2
    assert "more than the 0 MiB" in result.stderr or "MiB jvpcli uploads" in result.stderr
    assert not (workspace / "out").exists()


# As a user runs it: a driver process, a cluster at RAY_ADDRESS


def run_driver(config: Path, address: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.Popen(
        [sys.executable, "-m", "jvpcli", "compute", str(config), "--executor", "ray", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(folder: Path, pattern: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not list(folder.glob(pattern)):
        if time.monotonic() > deadline:
            pytest.fail(f"nothing matched {pattern} in {folder} after {seconds} s")
        time.sleep(0.2)


def test_a_sweep_on_a_cluster_named_by_ray_address(workspace, cluster) -> None:
    driver = run_driver(write_sweep(workspace), cluster, "--json")
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert f"Ray cluster {cluster}" in stderr
    document = json.loads(stdout)
    assert [run["status"] for run in document["runs"]] == ["ok"] * 8
    written = outputs(workspace / "out")
    assert len(written) == 8
    assert {metadata(p)["jvpcli.executor"] for p in (workspace / "out").iterdir()} == {"ray"}


def test_sigterm_on_the_driver_cancels_the_tasks_and_leaves_no_partial_file(workspace, cluster):
    config = write_sweep(workspace, "gated")
    (workspace / "gate").write_text("closed")
    driver = run_driver(config, cluster)
    wait_for(workspace, "blocked-*", 240)
    # The unblocked runs finish first: a SIGTERM just as one's reply arrives can abort Ray's
    # own driver (exit 1, the race of ray-project/ray#54798), which jvpcli cannot prevent.
    deadline = time.monotonic() + 120
    while len(list((workspace / "out").glob("*.safetensors"))) < 4:  # the x0.5 and x1 runs
        assert time.monotonic() < deadline, "the unblocked runs did not finish"
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr
    assert "Traceback" not in stderr
    time.sleep(2)
    assert not (workspace / "unblocked").exists()  # the blocked runs were stopped, not left
    assert not any(name.startswith("gated-x2") or name.startswith("gated-x3")
                   for name in outputs(workspace / "out"))  # fmt: skip
    assert leftovers(workspace) == []


def test_resume_after_the_driver_is_killed(workspace, cluster) -> None:
    config = write_sweep(workspace, "gated")
    (workspace / "gate").write_text("closed")
    driver = run_driver(config, cluster)
    wait_for(workspace, "blocked-*", 240)
    deadline = time.monotonic() + 120
    while len(list((workspace / "out").glob("*.safetensors"))) < 4:  # the x0.5 and x1 runs
        assert time.monotonic() < deadline, "the unblocked runs did not finish"
        time.sleep(0.2)
    driver.kill()
    driver.communicate(timeout=60)
    finished = {
        path.name: (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in (workspace / "out").glob("*.safetensors")
    }
    (workspace / "gate").unlink()
    again = run_driver(config, cluster, "--resume")
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert "skipped" in stdout
    now = {path.name: path for path in (workspace / "out").glob("*.safetensors")}
    assert len(now) == 8
    for name, identity in finished.items():  # reused, not recomputed
        assert (now[name].stat().st_ino, now[name].stat().st_mtime_ns) == identity
    assert not list((workspace / "out").glob("*.tmp"))
