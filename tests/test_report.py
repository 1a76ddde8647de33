"""fox1/report.py: bench.py's cells. A ratio is formed within each round, and a disturbed round (nan) is left out."""
import math

from fox1.report import Report, spread, versus


def test_ratios_are_formed_round_by_round_and_disturbed_rounds_are_dropped():
    ours, theirs = [100.0, 50.0, math.nan], [50.0, 50.0, 10.0]
    cell, reference, ratio = versus(ours, theirs, "tok/s", "llama.cpp")
    assert cell == "75.0 tok/s" and reference == "llama.cpp: 50.0 tok/s"
    assert ratio == "1.50x (1.00-2.00)"  # per round 2.0, 1.0 and nan; not 75 / 50
    assert spread([math.nan]).startswith("nan")


def test_a_missing_reference_says_so_instead_of_a_ratio(capsys):
    report = Report()
    report.add("decode", *versus(10.0, None, "tok/s"))
    report.numbers["x"] = 1
    report.print("title")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "title" and "HF: not run" in lines[2] and lines[-1] == '{"x": 1}'
