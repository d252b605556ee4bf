"""``vidq distill`` refuses bad input in one line before any work: a missing model folder, a stale
checkpoint folder without ``--resume``, a non-qvdit preset, out-of-range numbers."""

from __future__ import annotations

from vidq_jax.cli import main


def _error(argv, capsys, *needles):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (rc, err)
    for n in needles:
        assert n in err, (n, err)


def test_distill_user_errors(tmp_path, capsys):
    _error(["distill", tmp_path / "nothing", "--out", tmp_path / "q"], capsys, "model.json")
    (tmp_path / "q.ckpt").mkdir()
    (tmp_path / "q.ckpt" / "distill.json").write_text("{}")
    _error(["distill", tmp_path / "nothing", "--out", tmp_path / "q"], capsys, "--resume", "q.ckpt")
    _error(["distill", tmp_path, "--out", tmp_path / "q", "--preset", "viditq-w8a8"], capsys, "--preset")
    _error(["distill", tmp_path, "--out", tmp_path / "q", "--steps", "0"], capsys, "--steps")
