"""Controllers against fake sysfs trees: writes land in files, read-only files fall back to dry run."""
import warnings

import pytest

from chaincomp.energy import controllers as C
from chaincomp.energy.controllers import (CpufreqController, DryRunController, JetsonDevfreqController,
                                          make_controller)
from chaincomp.energy.profiles import load_profile

KHZ = "806400 1420800 2035200"
GPU_HZ = "114750000 216750000 522750000 854250000 1300500000"


def put(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


def get(path):
    return path.read_text().strip()


def cpu_tree(root, n=4, governor="schedutil", governors="performance powersave userspace schedutil"):
    for i in range(n):
        d = root / f"cpu{i}" / "cpufreq"
        put(d / "scaling_governor", governor)
        put(d / "scaling_available_governors", governors)
        put(d / "scaling_available_frequencies", KHZ)
        put(d / "scaling_setspeed", "<unsupported>")
        put(d / "scaling_cur_freq", 2035200)
    (root / "cpuidle").mkdir()
    (root / "cpufreq" / "policy0").mkdir(parents=True)
    return root


def gpu_tree(root, governors="nvhost_podgov userspace performance simple_ondemand"):
    d = root / "17000000.gp10b"
    put(d / "available_frequencies", GPU_HZ)
    put(d / "available_governors", governors)
    put(d / "governor", "nvhost_podgov")
    put(d / "min_freq", 114750000)
    put(d / "max_freq", 1300500000)
    put(d / "userspace" / "set_freq", 0)
    put(root / "13e10000.host1x" / "available_frequencies", "1 2")
    return root, d


def test_cpufreq_userspace_setspeed_on_every_cpu_and_restore(tmp_path):
    root = cpu_tree(tmp_path / "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctl = make_controller("cpufreq", root)
    assert isinstance(ctl, CpufreqController) and len(ctl.dirs) == 4
    assert ctl.available_mhz() == [806.4, 1420.8, 2035.2]
    assert all(get(root / f"cpu{i}/cpufreq/scaling_governor") == "userspace" for i in range(4))
    assert ctl.set_point(1400) == 1420.8                    # rounded up: the deadline still holds
    assert all(get(root / f"cpu{i}/cpufreq/scaling_setspeed") == "1420800" for i in range(4))
    ctl.set_point(load_profile("jetson_tx2_cpu").points()[0])
    assert get(root / "cpu3/cpufreq/scaling_setspeed") == "806400"
    assert ctl.set_point(5000) == 2035.2 and ctl.history == [1420.8, 806.4, 2035.2]
    ctl.close()
    assert all(get(root / f"cpu{i}/cpufreq/scaling_governor") == "schedutil" for i in range(4))


def test_cpufreq_context_manager_subset_and_userspace_restore(tmp_path):
    root = cpu_tree(tmp_path / "cpu", governor="userspace")
    with CpufreqController(root, cpus=[0, 2]) as ctl:
        ctl.set_point(806.4)
        assert get(root / "cpu1/cpufreq/scaling_setspeed") == "<unsupported>"
        assert get(root / "cpu2/cpufreq/scaling_setspeed") == "806400"
    assert get(root / "cpu2/cpufreq/scaling_setspeed") == "2035200"    # original speed back


def test_cpufreq_readonly_setspeed_mid_inference_warns_and_continues(tmp_path):
    root = cpu_tree(tmp_path / "cpu")
    ctl = make_controller("cpufreq", root)
    (root / "cpu2/cpufreq/scaling_setspeed").chmod(0o444)
    with pytest.warns(UserWarning, match="dry run"):
        assert ctl.set_point(806.4) == 806.4
    assert ctl.dry
    ctl.set_point(2035.2)                                   # no raise, no write, recorded
    assert ctl.history == [806.4, 2035.2]
    ctl.close()
    assert get(root / "cpu0/cpufreq/scaling_governor") == "schedutil"


def test_readonly_governor_falls_back_to_dry_run_and_undoes_partial_switch(tmp_path):
    root = cpu_tree(tmp_path / "cpu")
    (root / "cpu1/cpufreq/scaling_governor").chmod(0o444)
    with pytest.warns(UserWarning, match="recorded, not applied") as rec:
        ctl = make_controller("cpufreq", root, available_mhz=[100, 200])
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert isinstance(ctl, DryRunController) and ctl.available_mhz() == [100, 200]
    assert get(root / "cpu0/cpufreq/scaling_governor") == "schedutil"
    assert ctl.set_point(150) == 200 and ctl.history == [200]


def test_no_userspace_governor_falls_back(tmp_path):
    root = cpu_tree(tmp_path / "cpu", governors="performance powersave")
    with pytest.warns(UserWarning, match="userspace"):
        assert isinstance(make_controller("cpufreq", root), DryRunController)


def test_devfreq_userspace_governor(tmp_path):
    root, d = gpu_tree(tmp_path / "devfreq")
    ctl = make_controller("jetson_devfreq", root)
    assert isinstance(ctl, JetsonDevfreqController) and ctl.dev == d and ctl.mode == "userspace"
    assert get(d / "governor") == "userspace"
    assert ctl.set_point(500) == 522.75
    assert get(d / "userspace/set_freq") == "522750000"
    ctl.close()
    assert get(d / "governor") == "nvhost_podgov"


def test_devfreq_pinning_keeps_min_le_max(tmp_path, monkeypatch):
    root, d = gpu_tree(tmp_path / "devfreq", governors="nvhost_podgov performance")
    real = C._write

    def checked(p, v):
        real(p, v)
        if p.name in ("min_freq", "max_freq"):
            assert int(get(d / "min_freq")) <= int(get(d / "max_freq")), "min > max after a write"

    monkeypatch.setattr(C, "_write", checked)
    with JetsonDevfreqController(d) as ctl:
        assert ctl.mode == "pin"
        ctl.set_point(216.75)
        assert get(d / "min_freq") == get(d / "max_freq") == "216750000"
        ctl.set_point(1300.5)
        assert get(d / "min_freq") == get(d / "max_freq") == "1300500000"
        ctl.set_point(854.25)
    assert (get(d / "min_freq"), get(d / "max_freq")) == ("114750000", "1300500000")
    assert get(d / "governor") == "nvhost_podgov"


def test_devfreq_readonly_falls_back(tmp_path):
    root, d = gpu_tree(tmp_path / "devfreq", governors="nvhost_podgov")
    (d / "max_freq").chmod(0o444)
    with pytest.warns(UserWarning, match="read-only"):
        assert isinstance(make_controller("jetson_devfreq", root), DryRunController)


def test_auto_prefers_gpu_then_cpu_then_dry_run(tmp_path):
    groot, _ = gpu_tree(tmp_path / "devfreq")
    croot = cpu_tree(tmp_path / "cpu")
    nothing = tmp_path / "nothing"
    assert isinstance(make_controller(cpufreq_root=croot, devfreq_root=groot), JetsonDevfreqController)
    assert isinstance(make_controller(cpufreq_root=croot, devfreq_root=nothing), CpufreqController)
    with pytest.warns(UserWarning, match="no frequency control"):
        ctl = make_controller(cpufreq_root=nothing, devfreq_root=nothing)
    assert isinstance(ctl, DryRunController)
    with pytest.raises(ValueError):
        make_controller("turbo")


def test_dry_run_records_and_changes_nothing():
    with make_controller("dry_run", available_mhz=[216.75, 1300.5]) as ctl:
        ctl.set_point(300)
        ctl.set_point(100)
    assert ctl.history == [1300.5, 216.75] and ctl.dry
    assert DryRunController().set_point(123.0) == 123.0
