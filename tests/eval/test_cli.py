"""Bad requests stop with ONE line on stderr and exit code 2, before any model is loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

from longvila.eval import passkey, vniah


def _one_line_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("extra, message", [
    (["--haystack", "no/such/video.mp4"], "--haystack file not found: no/such/video.mp4"),
    (["--min_frames", "64", "--max_frames", "32"], "--min_frames 64 > --max_frames 32"),
    (["--frames_step", "0"], "--frames_step must be >= 1"),
    (["--depth_step", "150"], "--depth_step must be in (0, 100]"),
    (["--needles", "nonsense"], "--needles must be one of synthetic, photos, all"),
    (["--fps", "0"], "--fps must be > 0"),
    (["--model", "no/such/ckpt"], "not a checkpoint folder"),
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--scoring", "bleu"], "argument --scoring: invalid choice: 'bleu'"),
    (["--scoring", "generate", "--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
])
def test_vniah_bad_flags(capsys, tmp_path, extra, message):
    line = _one_line_error(capsys, vniah.main, ["--output_dir", str(tmp_path / "o"), *extra])
    assert line.startswith("longvila vniah: error: ") and message in line


def test_vniah_bad_needle_json(capsys, tmp_path):
    bad = tmp_path / "needles.json"
    bad.write_text('[{"image": "x.png", "question": "Q?"')
    line = _one_line_error(capsys, vniah.main, ["--output_dir", str(tmp_path / "o"), "--needles", str(bad)])
    assert line.startswith("longvila vniah: error: needle file") and "not valid JSON" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, message", [
    (["--min_length", "512", "--max_length", "256"], "--min_length 512 > --max_length 256"),
    (["--min_length", "16"], "--min_length must be >= 64"),
    (["--num_keys", "0"], "--num_keys must be >= 1"),
    (["--max_new_tokens", "-1"], "--max_new_tokens must be >= 1"),
])
def test_passkey_bad_flags(capsys, tmp_path, extra, message):
    line = _one_line_error(capsys, passkey.main, ["--output_dir", str(tmp_path / "o"), *extra])
    assert line.startswith("longvila passkey: error: ") and message in line


def test_console_script_routes_to_the_evaluations(tmp_path, subprocess_env):
    result = subprocess.run(
        [sys.executable, "-m", "longvila.cli", "vniah", "--output_dir", str(tmp_path), "--haystack", "gone.mp4"],
        capture_output=True, text=True, timeout=120, env=subprocess_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["longvila vniah: error: --haystack file not found: gone.mp4"]
    result = subprocess.run([sys.executable, "-m", "longvila.cli", "passkey", "--help"], capture_output=True,
                            text=True, timeout=120, env=subprocess_env)
    assert result.returncode == 0 and "--max_length" in result.stdout
