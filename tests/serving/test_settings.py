"""Serving settings are declared once (ServingConfig) and every flag comes from them; the serving
package stays split along its seams (no module over 400 lines)."""

import dataclasses
from pathlib import Path

import pytest

from emoflow.serving.__main__ import build_parser
from emoflow.serving.settings import ServingConfig

SERVING = Path(__file__).resolve().parents[2] / "src" / "emoflow" / "serving"


def parse(*argv: str) -> ServingConfig:
    return ServingConfig.from_args(build_parser().parse_known_args(["--model_name", "m", *argv])[0])


def test_defaults_of_the_flags_are_the_dataclass_defaults():
    assert parse() == ServingConfig()


def test_every_field_is_a_flag_and_round_trips():
    values = {"int": 7, "float": 2.5, "str": "x"}
    for f in dataclasses.fields(ServingConfig):
        default = getattr(ServingConfig(), f.name)
        if isinstance(default, bool):
            assert getattr(parse(f"--no_{f.name}"), f.name) is False
            assert getattr(parse(f"--{f.name}"), f.name) is True
        elif f.name == "speaker_norm":
            assert parse("--speaker_norm", "off").speaker_norm == "off"
        else:
            kind = type(default).__name__ if default is not None else "str"
            assert getattr(parse(f"--{f.name}", str(values[kind])), f.name) == values[kind], f.name


def test_kserve_flags_come_from_kserve_parser():
    args, _ = build_parser().parse_known_args(["--model_name", "m", "--http_port", "9001"])
    assert args.http_port == 9001 and args.model_name == "m"


def test_invalid_choice_is_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model_name", "m", "--speaker_norm", "maybe"])
    with pytest.raises(ValueError, match="speaker_norm"):
        ServingConfig(speaker_norm="maybe")


def test_no_serving_module_over_400_lines():
    long = {p.name: n for p in SERVING.glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
