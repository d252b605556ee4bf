"""``vidq search-groups``: the Q-DiT group-size search from the command line (a stand-in model, two sampling
steps, two candidates), its files and one-line errors."""

from __future__ import annotations

import json

from vidq_jax.cli import main
from vidq_jax.quant.plan import MixedPrecisionPlan


def test_search_groups_writes_a_plan_quantize_reads(standin_models, tmp_path, capsys):
    plan = tmp_path / "plan.json"

    argv = ["search-groups", str(standin_models["t2i"]), "--out", str(plan), "--steps", "2", "--samples", "2",
            "--population", "2", "--generations", "1", "--top-k", "1", "--max-bitops", "4", "--no-progress",
            "--backend", "simulate"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "best FD" in out and "vidq quantize" in out
    data = json.loads(plan.read_text())
    p = MixedPrecisionPlan.from_dict(data)
    assert p.rules and all(r.group_size in (32, 64, 128, 192, 288) for r in p.rules)
    assert data["search"]["evaluated"] == 2 and data["search"]["best_fd"] >= 0
    assert data["search"]["constraint"] == "BitOps <= 4 x all-128"
    state = json.loads((tmp_path / "plan.state.json").read_text())
    assert state["generation"] == 1 and len(json.loads((tmp_path / "plan.log.json").read_text())) == 1
    # a finished search is not overwritten by accident (resume itself: tests/quant/test_search.py)
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err


def test_search_groups_user_errors(tmp_path, capsys):
    assert main(["search-groups", "t2i", "--out", str(tmp_path / "plan.txt")]) == 2
    assert "ending in .json" in capsys.readouterr().err
    assert main(["search-groups", "t2i", "--out", str(tmp_path / "p.json"), "--resume"]) == 2
    assert "no search state" in capsys.readouterr().err
    assert main(["search-groups", str(tmp_path), "--out", str(tmp_path / "p.json")]) == 2
    assert "no trained model here" in capsys.readouterr().err
