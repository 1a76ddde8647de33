"""Command lines of the card files: `python train.py` runs cli/train.py's `main`, and so on for tokenizer.py,
data.py, sample.py, bench.py, eval.py and study.py. Here live what a command adds around the algorithm: flags and
their checks, files turned into token shards (`prepare`), a checkpoint folder opened for sampling, progress and
summaries. These modules import the card files; the card files import them only in their
`if __name__ == "__main__":` line (study.py also prepares its data with cli/data.py)."""
