"""Catalogue of emulated models.

Shapes follow real ``get_sysinfo`` replies (python-kasa's device fixtures, see
``shared/docs/plug-facts.md``): hardware 1.0 says ``type`` and
``latitude``/``longitude``; later hardware says ``latitude_i``/``longitude_i`` and
``next_action``; the newest say ``mic_type``. Energy meters report v1 units (A, V,
W, kWh) on HS110 hw 1.0 and v2 milli-units elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    key: str
    model: str
    hw_ver: str
    sw_ver: str
    dev_name: str
    type_key: str  # "type" (older firmware) or "mic_type"
    location_keys: str  # "float" (latitude) or "int" (latitude_i)
    emeter: str | None  # None, "v1" or "v2"
    outlets: int  # 0 for a single plug/switch
    countdown_module: str  # "count_down" or "countdown"
    voltage: float  # mains voltage the emulated meter reports
    mac_prefix: str
    next_action: bool = True
    status_field: bool = False
    #: ``time.set_time`` answers ``-3 "invalid argument"`` whatever it is sent, while
    #: ``set_timezone`` with a full date works (plug-facts: "on some firmware")
    set_time_refused: bool = False

    @property
    def feature(self) -> str:
        return "TIM:ENE" if self.emeter else "TIM"


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            "hs100", "HS100(US)", "1.0", "1.2.5 Build 171206 Rel.085954", "Wi-Fi Smart Plug",
            "type", "float", None, 0, "count_down", 120.0, "50:C7:BF", next_action=False,
        ),
        ModelSpec(
            "hs105", "HS105(US)", "1.0", "1.5.6 Build 191114 Rel.104204",
            "Smart Wi-Fi Plug Mini", "type", "int", None, 0, "count_down", 120.0, "50:C7:BF",
        ),
        # set_time_refused: which models refuse set_time is uncertain (plug-facts only
        # says "some firmware", naming none). It is on for this one model so that the
        # set_timezone path is exercised against a catalogue model; it is not a claim
        # about this exact firmware.
        ModelSpec(
            "hs110", "HS110(EU)", "1.0", "1.2.5 Build 171213 Rel.101523",
            "Wi-Fi Smart Plug With Energy Monitoring", "type", "float", "v1", 0, "count_down",
            230.0, "50:C7:BF", next_action=False, set_time_refused=True,
        ),
        ModelSpec(
            "hs110v2", "HS110(EU)", "2.0", "1.5.2 Build 180130 Rel.085820",
            "Smart Wi-Fi Plug With Energy Monitoring", "type", "int", "v2", 0, "count_down",
            230.0, "B0:BE:76",
        ),
        ModelSpec(
            "hs200", "HS200(US)", "5.0", "1.0.2 Build 200819 Rel.105309",
            "Smart Wi-Fi Light Switch", "mic_type", "int", None, 0, "count_down", 120.0,
            "1C:3B:F3", status_field=True,
        ),
        ModelSpec(
            "hs300", "HS300(US)", "2.0", "1.0.12 Build 220121 Rel.175814",
            "Smart Wi-Fi Power Strip", "mic_type", "int", "v2", 6, "countdown", 120.0,
            "C0:06:C3", next_action=False, status_field=True,
        ),
        ModelSpec(
            "kp303", "KP303(UK)", "1.0", "1.0.3 Build 191105 Rel.113122",
            "Kasa Smart Wi-Fi Power Strip", "mic_type", "int", None, 3, "countdown", 230.0,
            "1C:3B:F3", next_action=False, status_field=True,
        ),
    )
}
