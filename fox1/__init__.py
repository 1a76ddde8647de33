"""Support modules for fox1: everything the card files (model.py, tokenizer.py, data.py, train.py, sample.py,
bench.py) need that is not Fox-1 itself. They import nothing from the card files or from cli/.

    files.py          one-line InputErrors, atomic writes, run locks, numeric flag rules, an ordered parallel map
    documents.py      corpora as they ship: text, JSONL, Parquet, .gz / .zst, hf: datasets -> documents
    corpus.py         the built-in corpus: this Python's standard library, as documents and conversations
    bpe_file.py       tokenizer.txt, our BPE as a readable text file
    hf_tokenizer.py   Hugging Face tokenizer.json, read exactly as `tokenizers` encodes, and written for ours
    chat_template.py  Jinja chat templates (Gemma's turn format by default), rendered in a bounded sandbox
    shards.py         prepared token sources on disk (uint32 shards + meta.json), written whole or not at all
    hf_llama.py       Hugging Face Llama config.json and safetensors <-> our (fused) state dict
    gguf.py           llama.cpp's GGUF file, written from an export (`python -m fox1.gguf`)
    checkpoints.py    DCP training checkpoints, the `latest` marker, the metrics log
    distributed.py    the process group (torchrun, gloo / NCCL) and stopping a run on SIGTERM / Ctrl-C
    speed.py          CPU speed paths for inference: one-row decode loop, column-major, int8 and int4 weights
    machine.py        timers, A/B rounds and this machine's measured peaks (bench.py)
    report.py         bench.py's table: per-round ratios, their median and range
    hf_reference.py   the Hugging Face contenders bench.py times fox1 against, when installed
    llama_cpp.py      llama.cpp's tools as bench.py's edge contender, when a build is given
"""
