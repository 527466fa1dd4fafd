import json

from botnet.cli import main


def test_models_table_lists_every_model_with_counts(capsys):
    assert main(["models", "botnet50"]) == 0
    out = capsys.readouterr().out
    assert "| botnet50 | 224 | 20,852,008 | 20.85 | 4.02 |" in out


def test_models_json_with_override_and_size(capsys):
    assert main(["models", "botnet_s1_59", "--json", "--set", "se_in_attn=True"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params"] == 33_659_480 and abs(rows[0]["gmacs"] - 7.24) < 0.01
    assert main(["models", "resnet*", "--no-flops", "--img-size", "512", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["resnet101", "resnet152", "resnet200", "resnet50"]
    assert rows[-1]["params"] == 25_557_032 and rows[-1]["img_size"] == 512


def test_models_unknown_pattern(capsys):
    assert main(["models", "nothing*"]) == 1


def test_help_lists_commands(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "models" in capsys.readouterr().out


def test_detect_predict_takes_image_files_after_its_options(monkeypatch):
    """``detect predict RUN --ann F a.png b.png``: argparse alone takes positionals only before the first
    option; the files after them still reach the command, in order, and an unknown option is still refused."""
    import pytest

    from botnet import cli
    from botnet.cli import cmd_detect

    seen = {}
    monkeypatch.setattr(cmd_detect, "_predict", lambda args: seen.update(files=list(args.files), ann=args.ann) or 0)
    assert cli.main(["detect", "predict", "RUN", "x.png", "--ann", "a.json", "y.png", "z.png"]) == 0
    assert seen == {"files": ["x.png", "y.png", "z.png"], "ann": "a.json"}
    with pytest.raises(SystemExit) as e:
        cli.main(["detect", "predict", "RUN", "--ann", "a.json", "y.png", "--bogus"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["models", "botnet50", "extra"])
    assert e.value.code == 2
