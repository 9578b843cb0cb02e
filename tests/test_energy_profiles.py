import pytest
import yaml

from chaincomp.energy.profiles import builtin_profiles, load_profile, profile_from_dict
from chaincomp.errors import UserError

MODEL = {"activity": 0.5, "capacitance_f": 1e-9, "static_power": {"k_w_per_v": 0.2}}


def write(tmp_path, data, name="board.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def base(**over):
    d = {"name": "b", **MODEL, "operating_points": [{"freq_mhz": 100, "voltage_v": 0.8},
                                                     {"freq_mhz": 200, "voltage_v": 0.9}]}
    d.update(over)
    return d


@pytest.mark.parametrize("name", ["generic_cpu", "jetson_tx2_cpu", "jetson_tx2_gpu"])
def test_builtins_load(name):
    p = load_profile(name)
    assert p.name == name and len(p.points()) >= 3
    assert name in builtin_profiles()


def test_tx2_levels():
    assert [p.freq_mhz for p in load_profile("jetson_tx2_cpu").points()] == [806.4, 1420.8, 2035.2]
    assert [p.freq_mhz for p in load_profile("jetson_tx2_gpu").points()] == [216.75, 522.75, 854.25, 1300.5]


def test_modelled_power_formula(tmp_path):
    p = load_profile(write(tmp_path, base()))
    pt = p.points()[1]
    assert pt.power_kind == "modelled"
    assert pt.dynamic_w == pytest.approx(0.5 * 1e-9 * 0.81 * 200e6)
    assert pt.static_w == pytest.approx(0.2 * 0.9)
    assert pt.energy_per_cycle_j == pytest.approx((pt.dynamic_w + pt.static_w) / 200e6)


def test_measured_power_wins_and_model_not_required(tmp_path):
    d = {"name": "m", "operating_points": [{"freq_mhz": 100, "voltage_v": 0.8, "power_w": 1.5}]}
    pt = load_profile(write(tmp_path, d)).points()[0]
    assert pt.power_w == 1.5 and pt.power_kind == "measured"


@pytest.mark.parametrize("data, field", [
    (base(operating_points=[{"freq_mhz": 200, "voltage_v": 0.8}, {"freq_mhz": 100, "voltage_v": 0.9}]),
     "operating_points[1].freq_mhz"),
    (base(operating_points=[{"freq_mhz": 100, "voltage_v": 0.8}, {"freq_mhz": 100, "voltage_v": 0.9}]),
     "operating_points[1].freq_mhz"),
    (base(operating_points=[{"freq_mhz": 100, "voltage_v": 0.9}, {"freq_mhz": 200, "voltage_v": 0.8}]),
     "operating_points[1].voltage_v"),
    (base(operating_points=[{"freq_mhz": -5, "voltage_v": 0.9}]), "operating_points[0].freq_mhz"),
    (base(operating_points=[{"freq_mhz": 5, "voltage_v": 0}]), "operating_points[0].voltage_v"),
    (base(operating_points=[{"freq_mhz": 5, "voltage_v": 1, "power_w": 0}]), "operating_points[0].power_w"),
    (base(operating_points=[{"voltage_v": 1}]), "operating_points[0].freq_mhz"),
    (base(operating_points=[]), "operating_points"),
    (base(capacitance_f=None), "capacitance_f"),
    (base(static_power={"k_w_per_v": -1}), "static_power.k_w_per_v"),
    (base(freq=3), "freq"),
    ({k: v for k, v in base().items() if k != "name"}, "name"),
    (base(macs_per_cycle={"8": 4}), "macs_per_cycle"),
    (base(macs_per_cycle={"8x8": 4}, cycles_per_mac={"8x8": 0.25}), "cycles_per_mac"),
])
def test_invalid_profiles_give_one_line_naming_file_and_field(tmp_path, data, field):
    if data.get("capacitance_f", 0) is None:
        del data["capacitance_f"]
    path = write(tmp_path, data)
    with pytest.raises(UserError) as ei:
        load_profile(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg and field in msg, msg


def test_bad_yaml_missing_file_unknown_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_profile(bad)
    with pytest.raises(UserError, match="not found"):
        load_profile(tmp_path / "none.yaml")
    with pytest.raises(UserError, match="built-in"):
        load_profile("no_such_board")
    with pytest.raises(UserError, match="mapping"):
        profile_from_dict([1, 2], "x.yaml")


def test_cycles_from_throughput_table():
    p = profile_from_dict(base(macs_per_cycle={"8x8": 4, "32x32": 1}))
    assert p.cycles({(8, 8): 400, (32, 32): 10}) == pytest.approx(110)
    q = profile_from_dict(base(cycles_per_mac={"8x8": 0.5}))
    assert q.cycles({(8, 8): 10}) == pytest.approx(5)
    with pytest.raises(UserError, match="4x4"):
        p.cycles({(4, 4): 1})
    with pytest.raises(UserError):
        profile_from_dict(base()).cycles({(8, 8): 1})
