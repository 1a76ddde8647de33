"""Every command's --help works, and every numeric flag is checked before any work: each command's FLAG_RULES
table is walked with values it must refuse (argparse's exit status 2 and one error line naming the flag)."""
import pytest

from cli import bench as bench_cli, data as data_cli, eval as eval_cli, sample as sample_cli, study as study_cli
from cli import tokenizer as tokenizer_cli, train as train_cli

# (module, how to parse argv, argv that every call starts with, FLAG_RULES; per-flag argv where it differs)
COMMANDS = {
    "train": (train_cli.parse_args, [], train_cli.FLAG_RULES, {}),
    "sample": (sample_cli.parse_args, [], sample_cli.FLAG_RULES, {}),
    "eval": (eval_cli.parse_args, ["--data", "x"], eval_cli.FLAG_RULES, {}),
    "bench": (bench_cli.parse_args, [], bench_cli.FLAG_RULES, {}),
    "study": (study_cli.parse_args, ["gqa"], study_cli.FLAG_RULES, {}),
    "data": (data_cli.parse_args, ["prepare", "--input", "x", "--tokenizer", "t", "--out", "o"], data_cli.FLAG_RULES,
             {"context_len": ["stats", "--data", "d"], "total_tokens": ["stats", "--data", "d"]}),
    "tokenizer": (tokenizer_cli.main, ["train", "--input", "x", "--out", "o"], tokenizer_cli.FLAG_RULES, {}),
}
HELPS = [("train", []), ("sample", []), ("eval", []), ("bench", []), ("study", []), ("data", []),
         ("data", ["prepare"]), ("data", ["prepare-builtin"]), ("data", ["prepare-chat"]), ("data", ["stats"]),
         ("tokenizer", []), ("tokenizer", ["train"]), ("tokenizer", ["encode"])]


def refused_values(rule) -> list[str]:
    values = ["nan", "inf"]
    if rule.low is not None:
        values.append(str(rule.low if rule.above else rule.low - 1))
    if rule.high is not None:
        values.append(str(rule.high + 1))
    return values


@pytest.mark.parametrize("command, words", HELPS)
def test_every_help_prints_and_exits_0(command, words, capsys):
    with pytest.raises(SystemExit) as done:
        COMMANDS[command][0](words + ["--help"])
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


CASES = [(command, flag, value) for command, (_, _, rules, _) in COMMANDS.items()
         for flag, rule in rules.items() for value in refused_values(rule)]


@pytest.mark.parametrize("command, flag, value", CASES)
def test_every_numeric_flag_refuses_values_outside_its_rule(command, flag, value, capsys):
    parse, base, _, per_flag = COMMANDS[command]
    option = "--" + flag.replace("_", "-")
    with pytest.raises(SystemExit) as done:
        parse(per_flag.get(flag, base) + [option, value])
    error = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and ": error: " in error[-1] and option in error[-1], error
