"""`audio-omni-train`: its sub-commands, their arguments and refusals (nothing heavy runs here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import ONLINE, build_parser
from training.cli import TRAINING, main

ROOT = Path(__file__).resolve().parents[2]


def test_the_online_cli_no_longer_offers_offline_work():
    assert not {"dataset", "train"} & set(ONLINE.commands)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dataset", "synth"])
    assert set(TRAINING.commands) == {"synth", "precompute", "train", "small", "evaluate"}


def test_every_training_command_module_loads_and_parses_its_help(capsys):
    for name in TRAINING.commands:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert "usage: audio-omni-train " + name in capsys.readouterr().out


def test_help_imports_neither_torch_nor_ray():
    script = (
        "import sys\nfrom training.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_small_recipe_phases_take_the_recipe_arguments():
    parser = build_parser(TRAINING)
    args = parser.parse_args(["small", "dit", "--work", "w", "--pairs", "320", "--batch", "24", "--dit-s", "30"])
    assert (args.phase, args.work, args.pairs, args.batch, args.dit_s) == ("dit", "w", 320, 24, 30.0)
    assert parser.parse_args(["small", "export", "--work", "w"]).dst == "model/data/small"
    with pytest.raises(SystemExit):  # the codec phase takes no DiT arguments
        parser.parse_args(["small", "codec", "--batch", "24"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["small", "codec", "--pairs", "0"], "pairs must be an integer >= 1, got 0"),
        (["small", "dit", "--event-weight", "0"], "event-weight must be in (0, 100], got 0.0"),
        (["small", "train", "--lr", "2"], "0 < lr <= 1"),
        (["evaluate", "--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["evaluate", "--weights", "/nonexistent/model.safetensors"], "no weights file at /nonexistent"),
        (["small", "dit", "--work", "/nonexistent/run"], "run the `features` and `codec` phases first"),
        (["small", "export", "--work", "/nonexistent/run"], "run the `features` and `dit` phases first"),
    ],
)
def test_bad_values_are_refused_with_a_message_before_any_work(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"audio-omni-train {argv[0]}: error: ") and message in err, err
