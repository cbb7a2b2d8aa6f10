"""The negatives report: which entry wins, the table cells and the picks' held-out settings,
on hand-made rows (no runs needed)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "toy2d")]

import negatives_report as report  # noqa: E402
import run as negatives_run  # noqa: E402

from autoguide.eval.sweep import variant_label  # noqa: E402


def toy_row(logp, outliers, recall, weight=2.0, variant="apg=null"):
    return {
        "toy_logp": logp,
        "toy_outliers": outliers,
        "toy_precision": 0.9,
        "toy_recall": recall,
        "weight": weight,
        "variant": variant,
        "guide_nimg": None,
        "guide": "layer_skip",
        "guide_std": None,
    }


def entry(label, apg, selected, heldout):
    return {
        "tag": label,
        "label": label,
        "apg": apg,
        "evaluations": "2 main",
        "tried": [],
        "selection": selected,
        "heldout": heldout,
    }


def test_toy_winner_keeps_the_recall_floor_on_the_heldout_seeds():
    unguided = toy_row(-0.5, 0.12, 0.97, weight=1.0)
    results = {
        "unguided": {"selection": unguided, "heldout": unguided},
        "negatives": [
            entry("collapsed", False, toy_row(0.9, 0.05, 0.96), toy_row(0.9, 0.05, 0.80)),  # best logp, recall lost
            entry("kept", True, toy_row(0.3, 0.08, 0.95, variant='p=0.1 apg={"eta":0.0}'), toy_row(0.2, 0.09, 0.95)),
        ],
    }
    assert report.winner("toy", results)["label"] == "kept"
    assert "Wins on the toy: kept with APG" in report.verdict("toy", results)
    lines = report.table("toy", results)
    assert lines[3].startswith("| collapsed | - | w 2 |") and "| 8.00% |" not in lines[3]
    assert lines[4] == "| kept | eta 0 | w 2, p=0.1 | 0.3 | 0.2 | 9.00% | 0.9 | 0.95 | 2 main |"


def test_mnist_winner_is_the_lowest_heldout_fd_inf():
    def row(fd, fd_inf):
        return {
            "fd_mnist": fd,
            "fd_inf_mnist": fd_inf,
            "precision_mnist": 0.5,
            "recall_mnist": 0.9,
            "weight": 2.0,
            "variant": "apg=null",
            "guide": "mnist-xs-guide@8400",
            "guide_nimg": 8400.0,
            "guide_std": 0.1,
            "seconds": 30.0,
        }

    results = {
        "unguided": {"selection": row(60, 30), "heldout": row(35, 30)},
        "negatives": [
            entry("a", False, row(50, 0), row(30, 25)),
            entry("b", False, row(40, 0), row(28, 26)),
        ],
    }
    assert report.winner("mnist", results)["label"] == "a"  # FD_inf decides, not the 1,000-image FD
    assert "-16.7%" in report.verdict("mnist", results)
    assert report.setting_text(results["negatives"][0]["selection"]) == "w 2, guide mnist-xs-guide@8400 EMA 0.1"


def test_sweep_overrides_of_the_grid():
    dropout = next(n for n in negatives_run.TOY.negatives if n.tag == "dropout")
    assert negatives_run.variants(dropout) == [
        {"p": 0.1, "apg": None},
        {"p": 0.1, "apg": {"eta": 0.0}},
        {"p": 0.3, "apg": None},
        {"p": 0.3, "apg": {"eta": 0.0}},
    ]
    assert (
        negatives_run.term_override({"blocks": [None, ["dec.16x16_block1"]], "apg": negatives_run.APG_AXIS})
        == "grid.term={blocks:[null,[dec.16x16_block1]],apg:[null,{eta:0.0}]}"
    )
    # run.py finds a row's options by its label: the labels are the sweep's own
    assert [variant_label(v) for v in negatives_run.variants(dropout)] == [
        "p=0.1 apg=null",
        'p=0.1 apg={"eta":0.0}',
        "p=0.3 apg=null",
        'p=0.3 apg={"eta":0.0}',
    ]


def test_rules_report_ranks_every_rule_against_plain_at_each_weight():
    import rules_report

    def rule(tag, fds):
        return {
            "tag": tag,
            "label": tag,
            "term": {},
            "rows": [
                {"weight": w, "fd_inf_mnist": fd, "fd_mnist": fd + 10} for w, fd in zip((2.5, 4.0), fds, strict=True)
            ],
        }

    results = {
        "unguided": {"fd_inf_mnist": 80.0, "fd_mnist": 90.0},
        "weights": [2.5, 4.0],
        "negatives": [
            {"tag": "cfg", "label": "CFG", "rules": [rule("plain", [50.0, 70.0]), rule("tcfg", [52.0, 56.0])]}
        ],
    }
    text = rules_report.markdown({"mnist": results}, "abc")
    assert "| tcfg | 52 / 62 | 56 / 66 |" in text
    assert "- w 2.5: best plain: fd_inf_mnist 50 vs plain 50 (+0.0%)." in text
    assert "- w 4: best tcfg: fd_inf_mnist 56 vs plain 70 (-20.0%)." in text


def test_fbg_rows_take_the_weight_cap_of_their_variant():
    """FBG's term weight is 1: each variant's ``max_weight`` is the table weight it stands for."""
    (fbg,) = [r for r in negatives_run.RULES if r.feedback]
    axes = negatives_run.rule_axes(negatives_run.MNIST, fbg)
    assert [o["max_weight"] for o in axes["fbg"]] == list(negatives_run.RULE_WEIGHTS["mnist"])
    assert all(o["offset"] < 0 < o["temp"] for o in axes["fbg"])
