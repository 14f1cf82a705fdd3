"""The command line: clear start-up errors, and generate through a server or in-process."""

from __future__ import annotations

from typer.testing import CliRunner

from livegen.cli import app
from livegen.safety.provenance import read_manifest

runner = CliRunner()


def test_serve_with_an_empty_model_list_says_how_to_point_at_one():
    result = runner.invoke(app, ["serve"], env={"LIVEGEN_MODELS": "[]"})
    assert result.exit_code == 2
    assert "--model" in result.output and "make serve MODEL=" in result.output


def test_models_named_on_the_command_line_replace_the_embedded_default(tiny_sd):
    from livegen.cli import _settings

    settings = _settings([str(tiny_sd)], None, "auto", "auto", "auto", False, None, None)
    assert [m.source for m in settings.models] == [str(tiny_sd)]


def test_serve_with_a_missing_model_names_the_path(tmp_path):
    missing = tmp_path / "absent-model"
    result = runner.invoke(app, ["serve", "--model", str(missing)])
    assert result.exit_code == 2
    assert str(missing) in result.output


def test_generate_in_process_writes_a_signed_image(tiny_sd, tmp_path, signing_keys):
    out = tmp_path / "out.png"
    result = runner.invoke(app, ["generate", "a cat", "-o", str(out), "--model", str(tiny_sd), "--size", "64x64"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert read_manifest(out.read_bytes(), "image/png", signing_keys / "root.pem").valid


def test_generate_through_a_running_server_writes_a_signed_image(server, tmp_path, signing_keys):
    out = tmp_path / "out.jpg"
    result = runner.invoke(app, ["generate", "a cat", "-o", str(out), "--url", server.url, "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:2] == b"\xff\xd8"
    assert "seed 4" in result.output
    report = read_manifest(out.read_bytes(), "image/jpeg", signing_keys / "root.pem")
    assert report.valid and report.generation["seed"] == 4


def test_generate_reports_a_blocked_prompt(server, tmp_path):
    result = runner.invoke(app, ["generate", "a decapitated body in a pool of blood", "-o", str(tmp_path / "x.png"),
                                 "--url", server.url])
    assert result.exit_code == 1
    assert "blocked: prompt" in result.output


def test_generate_reports_a_server_error(server, tmp_path):
    result = runner.invoke(app, ["generate", "a cat", "-o", str(tmp_path / "x.png"), "--url", server.url,
                                 "--size", "96x96"])
    assert result.exit_code == 1
    assert "size_not_served" in result.output


def test_tiny_model_builds_a_loadable_pipeline(tmp_path):
    result = runner.invoke(app, ["tiny-model", str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny" / "model_index.json").is_file()
